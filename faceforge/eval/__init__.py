"""Evaluation: protocols and their numbers.

One rule decides where code goes:

* **Computations** live in ``faceforge/eval/*.py``: arrays of scores, embeddings, labels and groups in,
  numbers and plain records out (numpy, scikit-learn, OpenCV on arrays).  They read no files, call no
  embedder and know no benchmark spec: :mod:`~faceforge.eval.roc`, :mod:`~faceforge.eval.verification`,
  :mod:`~faceforge.eval.allpairs`, :mod:`~faceforge.eval.identification`, :mod:`~faceforge.eval.bias`,
  :mod:`~faceforge.eval.age`, :mod:`~faceforge.eval.ijb`, :mod:`~faceforge.eval.quality`,
  :mod:`~faceforge.eval.robustness`.
* **Kinds** live in ``faceforge/eval/kinds/*.py``: the adapters that parse a benchmark spec
  (``lfw:PAIRS:IMAGES``, ``ijb:DIR``, ...), read its files (pairs lists, IJB meta files, group and
  quality sidecars, images), call the embedder, hand arrays to the computations and write the result
  record and its plots.  A file reader for one benchmark's format sits beside its kind
  (:func:`faceforge.eval.kinds.ijb.load_ijb_meta`, :func:`faceforge.eval.kinds.age.read_pairs_list`,
  the quality sources of :mod:`faceforge.eval.kinds.quality_sources`); a format shared with training
  (LFW pairs files, identity folders) sits lower, in :mod:`faceforge.data`.
* Around them, two small layers that are neither: the **runner** that drives the kinds for one model
  (:mod:`~faceforge.eval.benchmarks`, :mod:`~faceforge.eval.embed_files`,
  :mod:`~faceforge.eval.parity_accuracy`), and the **drawing and reports** that turn numbers or records
  into figures and HTML (:mod:`~faceforge.eval.plots`, :mod:`~faceforge.eval.overlay_data`,
  :mod:`~faceforge.eval.report_overlay`, :mod:`~faceforge.eval.report_html`).

A computation module never imports from ``kinds``; a kind imports computations, never the runner.
"""
