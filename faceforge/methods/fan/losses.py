"""FAN's loss terms, each a small function with its formula (reconstructions: see :mod:`faceforge.methods.fan`).

With ``n(v) = v / ‖v‖``, ``sg`` stop-gradient, ``f_H`` / ``f_L`` the identity features of a high-resolution face
and of its down-sampled twin, ``x_H`` the face and ``x̂ = G(f_L, z_L)`` its normalisation::

    alignment (paired)      L_align = mean_i ‖n(f_L,i) − sg n(f_H,i)‖²                      (= 2 − 2 cos)
    feature GAN (unpaired)  L_D^f = ½[mean (D_f(n f_H) − 1)² + mean D_f(n f_L')²],  L_G^f = ½ mean (D_f(n f_L') − 1)²
    reconstruction          L_rec = mean |x̂ − x_H|                                             (L1, paired)
    image GAN               L_D^x = ½[mean (D_x(x_H) − 1)² + mean D_x(x̂)²],        L_G^x = ½ mean (D_x(x̂) − 1)²
    identity preserving     L_ip  = mean_i ‖n(E(x̂_i)) − sg n(f_H,i)‖²   (E's weights held: only G learns from it)
    disentanglement         L_dis = ‖C‖²_F / (d_z d_f),  C = z̃ᵀ sg(f̃) / N   (z̃, f̃: batch-standardised columns)

GANs are least-squares GANs (Mao et al., ICCV 2017).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "alignment_loss",
    "decorrelation_loss",
    "identity_preserving_loss",
    "lsgan_discriminator",
    "lsgan_generator",
    "reconstruction_loss",
]


def alignment_loss(f_low: Tensor, f_high: Tensor) -> Tensor:
    """``mean_i ‖n(f_L,i) − sg n(f_H,i)‖²``: zero when the two features point the same way."""
    return (
        (F.normalize(f_low.float(), dim=1) - F.normalize(f_high.detach().float(), dim=1)).pow(2).sum(1).mean()
    )


def identity_preserving_loss(f_generated: Tensor, f_high: Tensor) -> Tensor:
    """The alignment of the generated face's identity feature with the high-resolution one's."""
    return alignment_loss(f_generated, f_high)


def reconstruction_loss(generated: Tensor, target: Tensor) -> Tensor:
    """``mean |x̂ − x_H|`` (L1)."""
    return (generated.float() - target.float()).abs().mean()


def lsgan_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """``½[mean (D(real) − 1)² + mean D(fake)²]`` (``fake`` scored on detached inputs)."""
    return 0.5 * ((real.float() - 1.0).pow(2).mean() + fake.float().pow(2).mean())


def lsgan_generator(fake: Tensor) -> Tensor:
    """``½ mean (D(fake) − 1)²``."""
    return 0.5 * (fake.float() - 1.0).pow(2).mean()


def decorrelation_loss(z: Tensor, f: Tensor, eps: float = 1e-5) -> Tensor:
    """``‖C‖²_F / (d_z d_f)`` with ``C`` the cross-correlation of the batch-standardised ``z`` and ``sg f``:
    zero when no non-identity dimension correlates linearly with any identity dimension over the batch."""
    if z.shape[0] < 2:
        return z.sum() * 0.0
    zs = (z.float() - z.float().mean(0)) / (z.float().std(0) + eps)
    fd = f.detach().float()
    fs = (fd - fd.mean(0)) / (fd.std(0) + eps)
    c = zs.t() @ fs / z.shape[0]
    return c.pow(2).mean()
