"""Embedders: anything that maps aligned uint8 RGB faces [N, H, W, 3] to float32 embeddings [N, D].

Evaluation, teachers and deployment all speak this one contract, so a faceforge checkpoint, an ONNX file
and a third-party network are evaluated by the same code.
"""

from faceforge.embedders.base import EMBEDDERS, Embedder, embedder_from_spec

__all__ = ["EMBEDDERS", "Embedder", "embedder_from_spec"]
