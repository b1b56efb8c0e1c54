"""White-box L∞ attacks on any differentiable function of a network's input: FGSM and PGD.

Both work in the network's **own input space** (after preprocessing, ``x = (pixel/255 - mean) / std``), so an
attack budget ``ε`` given as a fraction of the pixel range ``[0, 1]`` (``8/255`` = eight grey levels) becomes
``ε / std_c`` per channel, and the valid pixels ``[0, 1]`` become the box ``[(0 - mean_c)/std_c, (1 - mean_c)/std_c]``
(:class:`InputBox`). Every iterate is projected onto the intersection of the ε-ball around the clean input and
that box, so an adversarial input is always an image a camera could have produced (up to quantisation).

PGD (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018), maximising ``L``::

    x_0     = x + U(-ε, ε)                       (random start; x itself without it)
    x_{t+1} = Π_{B_ε(x) ∩ box}( x_t + α · sign(∇_x L(x_t)) )

FGSM (Goodfellow, Shlens, Szegedy, ICLR 2015) is one such step with ``α = ε`` from ``x`` itself. ``ε`` may differ
per sample (AFA draws one per training face). The loss is summed over the batch, so each sample's gradient
is its own loss's gradient (samples do not interact: networks are in eval mode while attacked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from faceforge.core.errors import InputError

__all__ = ["AttackSettings", "EpsilonError", "InputBox", "check_epsilon", "fgsm", "parse_epsilon", "pgd"]


class EpsilonError(InputError):
    """An attack budget outside [0, 1] (a fraction of the pixel range)."""


def check_epsilon(eps: float, what: str = "ε") -> float:
    """``eps`` as a float in [0, 1]; else :class:`EpsilonError` saying how to write it."""
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise EpsilonError(
            f"{what}={eps:g} is outside [0, 1]: attack budgets are fractions of the pixel range; write 8/255 "
            "(or 0.0314) for eight grey levels"
        )
    return eps


def parse_epsilon(text: str) -> float:
    """``"8/255"``, ``"0.0314"`` or ``"0"`` -> a float in [0, 1] (:func:`check_epsilon`)."""
    s = text.strip()
    try:
        num, sep, den = s.partition("/")
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise EpsilonError(f"ε {text!r} is not a number: write 8/255 or 0.0314") from None
    return check_epsilon(value, f"ε {s}")


@dataclass(frozen=True)
class InputBox:
    """Per-channel affine map from pixels in [0, 1] to network input: ``x = (p - mean) / std``."""

    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def _view(self, values: Sequence[float], like: Tensor) -> Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def bounds(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The input of pixel 0 and of pixel 1, per channel, shaped ``[1, C, 1, 1]``."""
        mean, std = self._view(self.mean, like), self._view(self.std, like)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def radius(self, eps: float | Tensor, like: Tensor) -> Tensor:
        """ε (pixel fraction, scalar or per sample ``[N]``) in input units: ``ε / std_c``, ``[N or 1, C, 1, 1]``."""
        e = torch.as_tensor(eps, dtype=like.dtype, device=like.device).reshape(-1, 1, 1, 1)
        return e / self._view(self.std, like)

    def to_pixels(self, x: Tensor) -> Tensor:
        """Network input back to pixels in [0, 1]."""
        return x * self._view(self.std, x) + self._view(self.mean, x)


@dataclass(frozen=True)
class AttackSettings:
    """``steps`` (1 with ``step_size=1`` and no random start is FGSM), ``step_size`` α as a multiple of ε
    (Madry et al. use ``2.5 ε / steps``: the default), ``random_start`` (uniform in the ε-ball)."""

    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"attack steps={self.steps} must be >= 1")
        if self.step_size is not None and not self.step_size > 0:
            raise InputError(f"attack step_size={self.step_size} must be > 0 (a multiple of ε)")

    @property
    def alpha(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 / self.steps

    def describe(self) -> dict[str, object]:
        return {
            "norm": "Linf",
            "steps": self.steps,
            "step_size": f"{self.alpha:g} x eps",
            "random_start": self.random_start,
            "projection": "onto the eps-ball around the clean input and the valid pixel range [0, 1]",
        }


def pgd(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    eps: float | Tensor,
    box: InputBox = InputBox(),
    settings: AttackSettings = AttackSettings(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """The L∞ PGD input that (locally) maximises ``loss_fn`` (per-sample losses ``[N]`` or their sum) around ``x``.

    ``x``: preprocessed input ``[N, C, H, W]`` inside ``box``; ``eps``: pixel fraction in [0, 1], a number or
    one per sample. Returns a detached tensor with ``|x_adv - x| <= ε/std`` per channel and pixels in [0, 1];
    ``ε = 0`` returns ``x``. Parameters of the network behind ``loss_fn`` receive no gradient.
    """
    for value in eps.detach().flatten().tolist() if isinstance(eps, Tensor) else [eps]:
        check_epsilon(value)
    x = x.detach()
    lo, hi = box.bounds(x)
    r = box.radius(eps, x)
    low, high = torch.maximum(x - r, lo), torch.minimum(x + r, hi)
    if settings.random_start:
        noise = torch.rand(
            x.shape, generator=generator, device="cpu" if generator is None else generator.device
        )
        noise = noise.to(device=x.device, dtype=x.dtype)
        x_adv = x + (2.0 * noise - 1.0) * r
    else:
        x_adv = x.clone()
    x_adv = torch.minimum(torch.maximum(x_adv, low), high)
    step = settings.alpha * r
    for _ in range(settings.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, low), high)
    return x_adv.detach()


def fgsm(
    loss_fn: Callable[[Tensor], Tensor], x: Tensor, eps: float | Tensor, box: InputBox = InputBox()
) -> Tensor:
    """One signed-gradient step of size ε from ``x`` (Goodfellow et al. 2015), projected like :func:`pgd`."""
    return pgd(loss_fn, x, eps, box, AttackSettings(steps=1, step_size=1.0, random_start=False))
