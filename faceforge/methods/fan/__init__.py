"""FAN (Yin, Tai, Huang, Liu, ACCV 2020, arXiv 1911.11680): low-resolution identity features adapted to
high-resolution ones, and face normalisation (super-resolution) from disentangled features; a reconstruction.

* :mod:`.method`: ``method=fan``, the step (identity, alignment, feature GAN, reconstruction, image GAN,
  identity-preserving and disentanglement terms; three optimisers);
* :mod:`.modules`: non-identity encoder, decoder, image and feature discriminators;
* :mod:`.losses`: every term's formula;
* :mod:`.data`: continuous random-scale twins (DDL's degradation code), unpaired low-resolution faces, the grid PNG;
* config ``method=fan`` (``faceforge/configs/method/fan.yaml``).
"""

from faceforge.methods.fan import method  # noqa: F401  (registers fan)
from faceforge.methods.fan.method import FeatureAdaptation

__all__ = ["FeatureAdaptation"]
