"""Published methods: only what a paper adds that is not a generic part (data, model, objective, protocol).

Each lives in a subpackage (``sddfiqa``, ``mtlface``, ...) with its configs under ``faceforge/configs/method/``.
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
