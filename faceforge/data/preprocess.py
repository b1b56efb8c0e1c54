"""The one place where aligned uint8 faces become network input, and the metadata that describes it.

Networks in this field differ in colour order and normalisation (arcface_torch and TFace: RGB, ``(x/255 - 0.5)/0.5``;
AdaFace ``mk-minchul/AdaFace``: the same on BGR; MXNet-era insightface models: raw 0-255, normalised inside
the graph): faceforge records both in
every checkpoint and result file, and every embedder converts input through :class:`Preprocess`.
Default: RGB, ``(x/255 - 0.5)/0.5`` = ``(x - 127.5)/127.5`` (arcface_torch, TFace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from faceforge.data.align import TEMPLATE_NAME


@dataclass(frozen=True)
class Preprocess:
    input_size: int = 112
    colour: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    alignment: str = TEMPLATE_NAME

    def __post_init__(self) -> None:
        if self.colour not in ("RGB", "BGR"):
            raise ValueError(f"colour must be 'RGB' or 'BGR', got {self.colour!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["formula"] = "x = (pixel/255 - mean) / std, channels in colour order"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        keys = {"input_size", "colour", "mean", "std", "alignment"}
        kw = {k: v for k, v in d.items() if k in keys}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)

    def __call__(self, batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 RGB [N, H, W, 3] -> float32 [N, 3, H, W] (channels_last memory) on ``device``."""
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a uint8 batch [N, H, W, 3], got {tuple(batch.shape)} {batch.dtype}")
        if batch.shape[1] != self.input_size or batch.shape[2] != self.input_size:
            raise ValueError(
                f"images are {batch.shape[2]}x{batch.shape[1]}, the model expects aligned "
                f"{self.input_size}x{self.input_size} faces (run 'faceforge align' first)"
            )
        x = batch.to(device, non_blocking=True)
        if self.colour == "BGR":
            x = x.flip(-1)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
