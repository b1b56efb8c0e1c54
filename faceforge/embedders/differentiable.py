"""An embedder as a differentiable function of its input, and the white-box attack on verification pairs.

Only a network faceforge runs in PyTorch can be attacked with gradients: an embedder offers
``torch_network() -> (module, Preprocess)`` (:class:`~faceforge.embedders.checkpoint.CheckpointEmbedder` does);
any other says why not in its ``gradient_hint`` (dlib's C++ runtime, onnxruntime), and :func:`face_network`
stops with that one line, which names what to use instead (the same network as a faceforge checkpoint).

The attack (:func:`attack_pairs`) runs in the network's own input space (after faceforge's preprocessing,
clamped to valid pixels; :mod:`faceforge.models.attacks`) against exactly the embedding that is scored: the
flip-sum ``f(x) + f(mirror(x))`` when flip is on, L2-normalised. Of each pair ``(a, b)`` the first face is the
clean reference (an enrolled gallery face) and the second, the probe, is perturbed: genuine pairs pushed apart,
impostor pairs pulled together, i.e. PGD maximises ``s_i · cos(e(x_b + δ), e(x_a))`` with ``s_i = −1`` for a
genuine pair and ``+1`` for an impostor pair (a dodging and an impersonation attack, Sharif et al. CCS 2016's
terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.errors import InputError
from faceforge.core.precision import autocast
from faceforge.data.preprocess import Preprocess
from faceforge.models.attacks import AttackSettings, InputBox, pgd

__all__ = ["FaceNetwork", "NotDifferentiableError", "attack_pairs", "face_network"]

GENERIC_HINT = (
    "faceforge can only attack networks it runs in PyTorch: give a faceforge checkpoint (.pt), e.g. one written by "
    "'faceforge train' or 'faceforge import'"
)


class NotDifferentiableError(InputError):
    """An attack asked of a model whose input gradients faceforge cannot compute."""


@dataclass
class FaceNetwork:
    """A PyTorch face network in eval mode with its preprocessing: the attack's view of an embedder."""

    module: nn.Module
    preprocess: Preprocess
    device: torch.device
    precision: str = "fp32"

    @property
    def box(self) -> InputBox:
        return InputBox(tuple(self.preprocess.mean), tuple(self.preprocess.std))

    def inputs(self, faces: np.ndarray) -> Tensor:
        """uint8 RGB faces ``[N, S, S, 3]`` -> network input ``[N, 3, S, S]`` (fp32)."""
        return self.preprocess(torch.from_numpy(np.ascontiguousarray(faces)), self.device)

    def embed(self, x: Tensor, flip: bool) -> Tensor:
        """L2-normalised fp32 embeddings of network input ``x`` (flip-sum when ``flip``), differentiable in ``x``."""
        with autocast(self.device, self.precision):
            e = self.module(x).float()
            if flip:
                e = e + self.module(x.flip(-1)).float()
        return F.normalize(e, dim=1)


def face_network(embedder: Any) -> FaceNetwork:
    """The embedder's PyTorch network, or :class:`NotDifferentiableError` with its ``gradient_hint``."""
    get = getattr(embedder, "torch_network", None)
    if get is None:
        kind = (embedder.describe() or {}).get("kind", type(embedder).__name__)
        hint = getattr(embedder, "gradient_hint", GENERIC_HINT)
        raise NotDifferentiableError(f"cannot attack model kind {kind!r}: {hint}")
    module, preprocess = get()
    return FaceNetwork(
        module.eval(),
        preprocess,
        torch.device(getattr(embedder, "device", "cpu")),
        str(getattr(embedder, "precision", "fp32")),
    )


def embed_faces(net: FaceNetwork, faces: np.ndarray, flip: bool, batch_size: int = 64) -> np.ndarray:
    """Normalised embeddings of uint8 faces (no gradient)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(faces), batch_size):
            out.append(net.embed(net.inputs(faces[i : i + batch_size]), flip).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def attack_pairs(
    net: FaceNetwork,
    reference: np.ndarray,
    probes: np.ndarray,
    issame: np.ndarray,
    eps: float,
    settings: AttackSettings | None = None,
    flip: bool = True,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings of the attacked probes (see the module doc); the adversarial input stays continuous
    (not rounded to uint8), as a digital attacker's may.

    ``reference``: clean normalised embeddings ``[N, D]`` of the first faces; ``probes``: uint8 faces
    ``[N, S, S, 3]``; ``issame``: ``[N]`` bool. Returns ``(embeddings [N, D], max |δ| in pixels [N])``.
    """
    settings = settings or AttackSettings()
    gen = torch.Generator().manual_seed(int(seed))
    embs, linf = [], []
    box = net.box
    for i in range(0, len(probes), batch_size):
        x = net.inputs(probes[i : i + batch_size])
        ref = torch.from_numpy(np.ascontiguousarray(reference[i : i + batch_size])).to(x.device).float()
        sign = torch.from_numpy(np.where(np.asarray(issame[i : i + batch_size], bool), -1.0, 1.0)).to(
            x.device
        )

        def loss(xa: Tensor, ref: Tensor = ref, sign: Tensor = sign) -> Tensor:
            return sign.to(torch.float32) * (net.embed(xa, flip) * ref).sum(1)

        x_adv = pgd(loss, x, eps, box, settings, generator=gen) if eps > 0 else x
        with torch.no_grad():
            embs.append(net.embed(x_adv, flip).cpu())
        linf.append((box.to_pixels(x_adv) - box.to_pixels(x)).abs().flatten(1).amax(1).cpu())
    return torch.cat(embs).numpy(), torch.cat(linf).numpy()
