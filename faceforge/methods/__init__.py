"""Published methods: only what a paper adds that is not a generic part (data, model, objective, protocol).

**Where is paper X?**  One rule: the generic mathematics sits low in the layers, where any method can use it, and
each paper's glue sits here, in ``faceforge/methods/<paper>/``:

* generic mathematics: heads and logit transforms in :mod:`faceforge.models.heads` (ArcFace, CosFace,
  CurricularFace, CIFP's penalty), distillation losses in :mod:`faceforge.distill` (DDL, EKD, LIAAD, RKD, ...),
  backbones and attacks in :mod:`faceforge.models`, protocols in :mod:`faceforge.eval`;
* the objective that puts such a part into training is registered in :mod:`faceforge.objectives` under the
  paper's name (``objectives/cifp.py``, ``objectives/ddl_objective.py``, ``objectives/distillation.py``: the
  engine builds objectives from that registry without importing this package); file names there say what
  they hold, so none repeats a ``distill/`` name (``distill/ddl.py`` is DDL's loss, ``objectives/ddl_objective.py``
  its objective; ``distill/teachers.py`` embeds the teachers, ``objectives/teacher_bank.py`` shares their
  tables in a run);
* everything else a paper needs (its own modules, data, sampler, optimiser or step, its tools) is a subpackage
  here (``sddfiqa``, ``mtlface``, ``afa``, ``fan``) with its configs under ``faceforge/configs/method/``.

``docs/papers.md`` lists every paper with its files (a test checks that each path exists).

Parts that train are objectives (:mod:`faceforge.objectives`) or, when they need their own modules, optimisers or
step, a :class:`faceforge.engine.method.Method`; importing this package registers them (``faceforge.config`` does
before it validates a config), so ``objectives.<name>`` and ``method.name=...`` find them. A method module may import
``core``, ``data``, ``models``, ``embedders``, ``eval``, ``distill``, ``objectives`` and the engine's contract
(``faceforge.engine.method``, ``faceforge.engine.step``); never ``cli`` (the command line calls methods).
"""

from faceforge.methods import (
    afa,  # noqa: F401  (AFA and PGD adversarial training: the afa and pgd_at methods)
    fan,  # noqa: F401  (FAN: the fan method)
    mtlface,  # noqa: F401  (MTLFace: the age and age_adversarial objectives)
    sddfiqa,  # noqa: F401  (SDD-FIQA: the quality_regression objective)
)
