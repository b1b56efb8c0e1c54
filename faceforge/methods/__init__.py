"""Published methods that need more than objectives from :mod:`faceforge.objectives`: their own modules, optimisers
or step (:class:`faceforge.engine.method.Method`), each in a subpackage with its config under
``faceforge/configs/method/``. Importing this package registers them (``faceforge.config`` does before it validates
a config), so ``method.name=...`` finds them.
"""

from faceforge.methods import mtlface  # noqa: F401  (MTLFace: the age and age_adversarial objectives)
