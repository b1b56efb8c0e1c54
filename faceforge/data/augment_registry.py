"""The augmentation registry (name -> class) and the ``Augment`` type.

It imports no augmentation: :mod:`faceforge.data.transforms` (flip, ``Compose``, ``build_augmentations``) and
:mod:`faceforge.data.augment_extra` (low resolution, blur, colour jitter, grey, random erasing) register theirs
here, and ``transforms`` imports ``augment_extra`` so building from config sees them all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from faceforge.core.registry import Registry

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTATIONS: Registry[Augment] = Registry("augmentation")
