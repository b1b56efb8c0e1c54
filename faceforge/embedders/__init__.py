"""Embedders: anything that maps aligned uint8 RGB faces [N, H, W, 3] to float32 embeddings [N, D].

Evaluation, teachers and deployment all speak this one contract, so a faceforge checkpoint, an ONNX file
and a third-party network are evaluated by the same code.
"""

# the built-in embedders register themselves in EMBEDDERS on import (one-way: base.py imports none of them)
from faceforge.embedders import checkpoint, dlib_resnet, onnx_model, sface  # noqa: F401
from faceforge.embedders.base import EMBEDDERS, Embedder, embedder_from_spec

__all__ = ["EMBEDDERS", "Embedder", "embedder_from_spec"]
