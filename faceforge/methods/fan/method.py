"""FAN: feature adaptation network for low-resolution face recognition and normalisation (``method=fan``).

Yin, Tai, Huang, Liu, "FAN: Feature Adaptation Network for Surveillance Face Recognition and Normalization",
ACCV 2020 (arXiv 1911.11680). Published mechanism: encoders split a face into identity and non-identity
features; the identity features of low-resolution faces are adapted to those of high-resolution ones (L2 on
paired synthetic down-sampling, a feature discriminator for unpaired real low-resolution faces); a decoder
normalises (super-resolves) the face from both features with reconstruction, adversarial and
identity-preserving losses; random scale augmentation uses continuous down-sampling factors. There is no public
code: the layers, weights and the choices marked [choice] are this reconstruction's, each an option.

A faceforge run of FAN:

* the identity encoder ``E`` is the run's backbone, shared by high- and low-resolution faces [choice: one
  network serves both at test time, so the checkpoint is an ordinary recognition model]; the high-resolution
  feature is the alignment target (stop-gradient);
* every batch face ``x_H`` gets a twin ``x_L`` down-sampled by a continuous random scale in
  ``[min_scale, max_scale]`` and resized back (:class:`~faceforge.methods.fan.data.RandomScaleTwins`, DDL's code);
* ``E`` learns from the run's objectives on both (``hr_id_weight``, ``lr_id_weight``), the paired alignment
  ``L_align`` and the feature GAN ``L_G^f`` against the feature discriminator ``D_f`` (real: ``n f_H``; fake: the
  features of ``method.unpaired_images`` when given, else of the batch's own twins: ``D_f`` scores features one by
  one, so their pairing is never used);
* the non-identity encoder ``N`` and the decoder ``G`` (:mod:`~faceforge.methods.fan.modules`) learn
  ``x̂ = G(n f_L, N(x_L))`` from ``L_rec``, ``L_G^x`` against the image discriminator ``D_x``, ``L_ip`` through ``E``
  with its weights held (eval mode, no update) and ``L_dis`` [choice: a decorrelation term keeps linear identity
  information out of ``N``]; ``f_L`` enters ``G`` detached [choice: option ``decoder_grad_to_encoder``] so the
  reconstruction never asks ``E`` to carry non-identity detail;
* ``D_x`` and ``D_f`` learn from their LSGAN losses; ``G``, ``N`` (Adam ``lr``, ``betas``) and the discriminators
  have optimisers of their own, the backbone and heads the run's.

Formulas: :mod:`faceforge.methods.fan.losses`. The decoder branch can run on the first ``decoder_rows`` faces of a
batch only, to bound its cost. Every ``grid_every`` steps and at the last step a grid PNG (low-resolution input |
normalised | high-resolution) is written to ``<run dir>/fan_grid.png``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from faceforge.core import distributed as D
from faceforge.data.dataset import Batch
from faceforge.engine.method import METHODS, Method, MethodContext, OptimizerSpec, eval_mode
from faceforge.methods.fan.data import RandomScaleTwins, UnpairedFaces, input_to_uint8, save_grid
from faceforge.methods.fan.losses import (
    alignment_loss,
    decorrelation_loss,
    identity_preserving_loss,
    lsgan_discriminator,
    lsgan_generator,
    reconstruction_loss,
)
from faceforge.methods.fan.modules import (
    FaceDecoder,
    FeatureDiscriminator,
    ImageDiscriminator,
    NonIdentityEncoder,
)

__all__ = ["FeatureAdaptation"]

GRID_NAME = "fan_grid.png"


@METHODS.register("fan")
class FeatureAdaptation(Method):
    """FAN (module doc). Options (``method.*``): scales ``min_scale`` (0.125), ``max_scale`` (0.5),
    ``interpolations``; loss weights ``hr_id_weight`` (0.5), ``lr_id_weight`` (0.5), ``align_weight`` (1.0),
    ``feature_gan_weight`` (0.05), ``rec_weight`` (1.0), ``image_gan_weight`` (0.05), ``ip_weight`` (0.5),
    ``disentangle_weight`` (0.1); networks ``nonid_dim`` (64), ``decoder_widths``, ``disc_widths``,
    ``feature_disc_hidden`` (256); ``decoder_rows`` (null: all), ``decoder_grad_to_encoder`` (false);
    ``unpaired_images`` (a folder, optional), ``unpaired_batch`` (16); Adam ``lr`` (2e-4), ``betas`` ((0.5, 0.999));
    ``grid_every`` (200), ``grid_faces`` (8)."""

    def __init__(
        self,
        ctx: MethodContext,
        *,
        min_scale: float = 0.125,
        max_scale: float = 0.5,
        interpolations: list[str] | tuple[str, ...] = ("nearest", "linear", "cubic", "area"),
        hr_id_weight: float = 0.5,
        lr_id_weight: float = 0.5,
        align_weight: float = 1.0,
        feature_gan_weight: float = 0.05,
        rec_weight: float = 1.0,
        image_gan_weight: float = 0.05,
        ip_weight: float = 0.5,
        disentangle_weight: float = 0.1,
        nonid_dim: int = 64,
        decoder_widths: list[int] | tuple[int, ...] = (128, 64, 32, 16),
        disc_widths: list[int] | tuple[int, ...] = (32, 64, 128),
        feature_disc_hidden: int = 256,
        decoder_rows: int | None = None,
        decoder_grad_to_encoder: bool = False,
        unpaired_images: str | None = None,
        unpaired_batch: int = 16,
        lr: float = 2e-4,
        betas: tuple[float, float] | list[float] = (0.5, 0.999),
        grid_every: int = 200,
        grid_faces: int = 8,
    ) -> None:
        super().__init__(ctx)
        weights = {"hr_id_weight": hr_id_weight, "lr_id_weight": lr_id_weight, "align_weight": align_weight,
                   "feature_gan_weight": feature_gan_weight, "rec_weight": rec_weight,
                   "image_gan_weight": image_gan_weight, "ip_weight": ip_weight,
                   "disentangle_weight": disentangle_weight}  # fmt: skip
        bad = [k for k, v in weights.items() if v < 0]
        if bad:
            raise ValueError(f"method.{bad[0]} must be >= 0")
        if decoder_rows is not None and decoder_rows < 1:
            raise ValueError("method.decoder_rows must be >= 1 (or null: every row)")
        self.w = {k: float(v) for k, v in weights.items()}
        size = int(getattr(ctx.backbone, "input_size", 112))
        self.twins = RandomScaleTwins(min_scale, max_scale, tuple(interpolations), ctx.seed)
        self.unpaired = UnpairedFaces(unpaired_images, size, ctx.seed) if unpaired_images else None
        self.nonid = NonIdentityEncoder(nonid_dim)
        self.decoder = FaceDecoder(ctx.embedding_size, nonid_dim, decoder_widths, size)
        self.image_disc = ImageDiscriminator(disc_widths)
        self.feature_disc = FeatureDiscriminator(ctx.embedding_size, feature_disc_hidden)
        self.options = {
            "min_scale": float(min_scale), "max_scale": float(max_scale), "interpolations": list(interpolations),
            **self.w, "nonid_dim": int(nonid_dim), "decoder_widths": [int(v) for v in decoder_widths],
            "disc_widths": [int(v) for v in disc_widths], "feature_disc_hidden": int(feature_disc_hidden),
            "decoder_rows": decoder_rows, "decoder_grad_to_encoder": bool(decoder_grad_to_encoder),
            "unpaired_images": unpaired_images, "unpaired_batch": int(unpaired_batch), "lr": float(lr),
            "betas": [float(b) for b in betas], "grid_every": int(grid_every), "grid_faces": int(grid_faces),
        }  # fmt: skip

    def optimizers(self) -> dict[str, OptimizerSpec]:
        settings = {
            "name": "adam", "lr": self.options["lr"], "betas": self.options["betas"], "weight_decay": 0.0,
            "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": 0.0,
        }  # fmt: skip
        return {
            "generator": OptimizerSpec([self.nonid, self.decoder], dict(settings)),
            "discriminators": OptimizerSpec([self.image_disc, self.feature_disc], dict(settings)),
        }

    def describe(self) -> dict[str, Any]:
        out = {"name": "fan", **self.options, "reconstruction": "Yin et al., ACCV 2020 (arXiv 1911.11680), from "
               "its published mechanism; see faceforge.methods.fan.method"}  # fmt: skip
        if self.unpaired is not None:
            out["unpaired"] = self.unpaired.describe()
        return out

    # ------------------------------------------------------------------------------------------ pieces
    def to_input(self, out: Tensor, engine: Any) -> Tensor:
        """Decoder output in [-1, 1] (pixels (o+1)/2) -> the network's input space."""
        pre = engine.t.preprocess
        mean = torch.tensor(pre.mean, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, device=out.device).view(1, 3, 1, 1)
        return ((out.float() + 1.0) / 2.0 - mean) / std

    def held_embed(self, engine: Any, x: Tensor) -> Tensor:
        """``E(x)`` with the encoder's weights held (eval mode, detached weights): gradient only to ``x``."""
        backbone = engine.t.backbone
        params = {n: p.detach() for n, p in backbone.named_parameters()}
        with eval_mode(backbone), engine.autocast():
            return functional_call(backbone, params, (x,), strict=False).float()

    def _set_disc_grad(self, on: bool) -> None:
        self.image_disc.requires_grad_(on)
        self.feature_disc.requires_grad_(on)

    # ---------------------------------------------------------------------------------------------- step
    def step(self, engine: Any, batch: Batch) -> None:
        if engine.precision == "fp16":
            raise ValueError(
                "method=fan trains several optimisers from one backward: use run.precision=bf16 or fp32"
            )
        k, rank, w = engine.accumulate, D.current().rank, self.w
        x_h = engine.preprocess(batch.images)
        low = self.twins(batch.images, batch.indices, engine.step)
        x_l = engine.preprocess(low)
        n_u = self.options["unpaired_batch"] * k
        x_u = (
            engine.preprocess(self.unpaired.sample(engine.step, n_u, rank))
            if self.unpaired is not None
            else None
        )
        for name in ("main", "generator", "discriminators"):
            engine.zero_grad(name)
        for obj in engine.objectives.values():
            obj.begin_step(2 * k)
        micros = engine.micro_batches(Batch(x_h, batch.labels, batch.indices, [], batch.branch))
        lows = x_l.chunk(k)
        unp = x_u.chunk(k) if x_u is not None else [None] * k
        shown: tuple[Tensor, Tensor, Tensor] | None = None
        for (micro, sync), xl, xu in zip(micros, lows, unp, strict=True):
            with sync:
                xh, n = micro.images, len(micro.images)
                parts = [xh, xl] + ([xu] if xu is not None else [])
                emb = engine.embed(torch.cat(parts))
                f_h, f_l = emb[:n], emb[n : 2 * n]
                f_fake = emb[2 * n :] if xu is not None else f_l  # D_f scores features one by one: no pairing
                terms: dict[str, Tensor] = {}
                ident = w["hr_id_weight"] * engine.objectives_loss(
                    engine.step_batch(micro, f_h), scale=0.5 / k
                )
                ident = ident + w["lr_id_weight"] * engine.objectives_loss(
                    engine.step_batch(micro, f_l), 0.5 / k
                )
                terms["align"] = alignment_loss(f_l, f_h)
                self._set_disc_grad(False)
                try:
                    terms["feature_gan"] = lsgan_generator(self.feature_disc(F.normalize(f_fake, dim=1)))
                    rows = slice(0, self.options["decoder_rows"] or n)
                    with engine.autocast():
                        z = self.nonid(xl[rows]).float()
                    f_dec = f_l[rows] if self.options["decoder_grad_to_encoder"] else f_l[rows].detach()
                    with engine.autocast():
                        out = self.decoder(F.normalize(f_dec, dim=1), z)
                    x_hat = self.to_input(out, engine)
                    terms["rec"] = reconstruction_loss(x_hat, xh[rows])
                    with engine.autocast():
                        terms["image_gan"] = lsgan_generator(self.image_disc(x_hat))
                    terms["ip"] = (
                        identity_preserving_loss(self.held_embed(engine, x_hat), f_h[rows])
                        if w["ip_weight"] > 0 else x_hat.sum() * 0.0
                    )  # fmt: skip
                    terms["disentangle"] = decorrelation_loss(z, f_l[rows])
                finally:
                    self._set_disc_grad(True)
                total = ident + sum(w[f"{t}_weight"] * v for t, v in terms.items())
                engine.backward(total / k, "main")
                with engine.autocast():
                    d_img = lsgan_discriminator(self.image_disc(xh[rows]), self.image_disc(x_hat.detach()))
                d_feat = lsgan_discriminator(
                    self.feature_disc(F.normalize(f_h.detach(), dim=1)),
                    self.feature_disc(F.normalize(f_fake.detach(), dim=1)),
                )
                engine.backward((d_img + d_feat) / k, "discriminators")
                engine.log({**{f"fan/{t}": float(v.detach()) for t, v in terms.items()},
                            "fan/d_image": float(d_img.detach()), "fan/d_feature": float(d_feat.detach()),
                            "fan/cos_hr_lr": float(F.cosine_similarity(f_h.detach(), f_l.detach()).mean())},
                           1.0 / k)  # fmt: skip
                if shown is None:
                    shown = (xl[rows].detach(), x_hat.detach(), xh[rows].detach())
        for obj in engine.objectives.values():
            obj.end_step()
        for name in ("main", "generator", "discriminators"):
            engine.optimizer_step(name)
        self.maybe_save_grid(engine, shown)

    def maybe_save_grid(self, engine: Any, shown: tuple[Tensor, Tensor, Tensor] | None) -> None:
        every, last = self.options["grid_every"], engine.step == engine.t.total_steps - 1
        if shown is None or not D.current().is_main or not (last or (every > 0 and engine.step % every == 0)):
            return
        m = self.options["grid_faces"]
        pre = engine.t.preprocess
        save_grid(engine.t.run_dir / GRID_NAME, [input_to_uint8(t[:m], pre) for t in shown])
