"""MTLFace (Huang, Zhang, Shan, CVPR 2021; TPAMI 2022): age-invariant face recognition and face age synthesis.

Face age synthesis: :mod:`.router` (identity conditional module), :mod:`.generator`, :mod:`.discriminator`,
:mod:`.fas` (the ``mtlface_fas`` method: LSGAN on a frozen AIFR encoder), :mod:`.selection` (selective
fine-tuning on synthesised faces).
"""

from faceforge.methods.mtlface import fas  # noqa: F401  (registers the mtlface_fas method)
