"""The L∞ attacks: PGD never leaves the ε-ball or the valid pixel range (in the network's own input space), FGSM
is one signed step, and budgets outside [0, 1] are refused with the way to write them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceforge.models.attacks import AttackSettings, EpsilonError, InputBox, fgsm, parse_epsilon, pgd


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(8)).eval()


@pytest.mark.parametrize(
    "mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
)
def test_pgd_stays_in_the_eps_ball_and_the_pixel_range(mean: tuple, std: tuple) -> None:
    net, box = _net(), InputBox(mean, std)
    pixels = torch.rand(6, 3, 16, 16)
    pixels[0] = 0.0  # faces at the edges of the range: the box clips the ball
    pixels[1] = 1.0
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    net(x)  # materialise the lazy layer
    eps = torch.tensor([0.0, 1, 2, 4, 8, 16]) / 255
    x_adv = pgd(lambda z: net(z).pow(2).sum(1), x, eps, box, AttackSettings(steps=7, step_size=0.6),
                generator=torch.Generator().manual_seed(1))  # fmt: skip
    moved = box.to_pixels(x_adv) - box.to_pixels(x)
    per_face = moved.abs().flatten(1).amax(1)
    assert torch.all(per_face <= eps + 1e-6)
    assert per_face[0] == 0 and per_face[-1] > 0.5 * eps[-1]  # ε = 0 leaves the face, a real budget is used
    adv_pixels = box.to_pixels(x_adv)
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    assert all(p.grad is None for p in net.parameters())


def test_pgd_raises_the_loss_and_fgsm_is_one_signed_step() -> None:
    net, box = _net(), InputBox()
    x = torch.rand(4, 3, 16, 16) * 1.6 - 0.8
    net(x)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return net(z).pow(2).sum(1)

    adv = pgd(loss, x, 4 / 255, box, AttackSettings(steps=5))
    assert torch.all(loss(adv) > loss(x))
    one = fgsm(loss, x, 2 / 255, box)
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x_req).sum(), x_req)
    expected = torch.clamp(x + (2 / 255) / 0.5 * g.sign(), -1, 1)
    assert torch.allclose(one, expected, atol=1e-6)


def test_epsilon_forms_and_refusals() -> None:
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert parse_epsilon("0.5") == 0.5 and parse_epsilon("0") == 0.0
    for bad in ("2", "-1/255", "300/255"):
        with pytest.raises(EpsilonError, match=r"outside \[0, 1\].*8/255"):
            parse_epsilon(bad)
    with pytest.raises(EpsilonError, match="not a number"):
        parse_epsilon("eight")
    with pytest.raises(EpsilonError):
        pgd(lambda z: z.sum((1, 2, 3)), torch.zeros(1, 3, 4, 4), 1.5)
