"""The ground floor: pieces every other package may import and that import nothing else of faceforge.

``registry`` (name -> constructor), ``distributed`` (torchrun process group or none), ``precision``
(device, autocast, ``no_autocast``), ``checkpoint`` (atomic save, ``weights_only`` load, RNG state),
``hashing`` and ``schema`` (the typed training-config dataclasses).
"""
