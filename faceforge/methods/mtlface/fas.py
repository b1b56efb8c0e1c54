"""MTLFace face age synthesis (FAS) as a method of the one engine: a generator and a discriminator trained with
their own Adam optimisers and an alternating step, on a frozen AIFR encoder and a frozen age estimator.

Huang, Zhang, Shan, CVPR 2021 §3.3–3.4 and the CVPR code (``models/fas.py``; recipe in ``models/mtlface.py``).
With ``x_s`` a source face, ``g`` a target age group drawn uniformly, ``x_t`` a real face of group ``g``,
``E`` the frozen encoder (``X_id``, ``X_age`` and its skip maps), ``A`` the frozen age estimator's group head on
top of its 101 age logits, ``G`` the generator (:class:`~faceforge.methods.mtlface.generator.AgeGenerator`) and
``D`` the conditional PatchGAN (:class:`~faceforge.methods.mtlface.discriminator.PatchDiscriminator`), each step
is, as in the code, first a discriminator update, then a generator update against the updated ``D`` (LSGAN)::

    L_D = ½ [ mean (D(x_t, g) − 1)² + mean D(G(x_s, g), g)² ]
    L_G = λ_gan · ½ mean (D(G(x_s, g), g) − 1)²
        + λ_id  · MSE( X_id(x_s), X_id(G(x_s, g)) )          # on the 512x7x7 identity MAPS, not embeddings
        + λ_age · CE( A(X_age(G(x_s, g))), g )                # through the frozen group head

with λ_gan = 75, λ_id = 0.002, λ_age = 10 and Adam(lr 1e-4, betas (0.5, 0.99)) for both ``G`` and ``D``.

What comes from where in a faceforge run:

* the encoder is the run's backbone (an AIFR backbone whose ``forward(x, return_features=True)`` returns
  ``X_id``, ``X_age`` and skip maps), started from an AIFR checkpoint with ``run.init`` and frozen
  (``trains_backbone = False``: eval mode, no gradient for its weights; the generator's gradient still flows
  *through* it to the synthesised image);
* the age estimator is rebuilt from the same checkpoint's ``age`` objective (option ``estimator_objective``),
  frozen and kept in eval mode; it is saved with the method so the run's checkpoint is self-contained;
* sources are the run's batches (every row of every source, augmented by ``data.augment``); the real target
  faces are drawn from the training rows whose ``age`` attribute (option ``age_attribute``) falls in the target
  group: UTKFace with its real ages through ``data.sources: [{root, labeller: utkface}]``, LFW with estimated
  ages through ``data.attributes`` (the AIFR helper's attribute file). They are read un-augmented
  (``dataset.image(i)``) and mirrored with probability ``target_flip`` (the code's RandomHorizontalFlip);
* target groups and target rows are drawn from a generator seeded by ``(run.seed, step, rank)``, so they do not
  depend on the global RNG and a resumed run draws exactly what an unbroken run draws.

Micro-batches (``optim.accumulate_steps=k``): the discriminator phase runs over every micro-batch before its
step, then the generator phase; with ``k = 1`` the synthesised batch is reused (one generator forward, as the
code), with ``k > 1`` it is recomputed in the generator phase with the generator's BatchNorm running statistics
held (so they move once per micro-batch, as with ``k = 1``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.data.dataset import Batch
from faceforge.data.image_io import UnreadableImageError
from faceforge.engine.method import METHODS, Method, MethodContext, OptimizerSpec
from faceforge.methods.mtlface.age import age2group, load_age_estimator
from faceforge.methods.mtlface.discriminator import PatchDiscriminator
from faceforge.methods.mtlface.generator import AgeGenerator

log = logging.getLogger(__name__)

__all__ = [
    "FASLossWeights",
    "FaceAgeSynthesis",
    "TargetSampler",
    "discriminator_loss",
    "encoder_layout",
    "generator_losses",
    "held_bn_statistics",
]

#: names of the AIFR encoder's feature outputs this method reads besides the skip maps
ID_MAP, AGE_MAP = "x_id", "x_age"


# ------------------------------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class FASLossWeights:
    gan: float = 75.0
    identity: float = 0.002
    age: float = 10.0


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """LSGAN ``L_D = ½[mean (D(x_t) − 1)² + mean D(G(x_s))²]`` (``d_fake`` computed on a detached image)."""
    return 0.5 * ((d_real.float() - 1.0).pow(2).mean() + d_fake.float().pow(2).mean())


def generator_losses(
    d_gen: Tensor,
    id_source: Tensor,
    id_synth: Tensor,
    group_logits: Tensor,
    target: Tensor,
    weights: FASLossWeights = FASLossWeights(),
) -> dict[str, Tensor]:
    """The generator's terms and their weighted sum ``total`` (see the module doc)."""
    gan = 0.5 * (d_gen.float() - 1.0).pow(2).mean()
    identity = F.mse_loss(id_synth.float(), id_source.float())
    age = F.cross_entropy(group_logits.float(), target.long())
    total = weights.gan * gan + weights.identity * identity + weights.age * age
    return {"gan": gan, "identity": identity, "age": age, "total": total}


@contextlib.contextmanager
def held_bn_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with batch statistics as usual but leave their running
    statistics (and counters) as they were: for a forward pass repeated within one step."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms
    ]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


# ------------------------------------------------------------------------------------------ the encoder
@dataclass(frozen=True)
class EncoderLayout:
    """Which feature maps of the AIFR encoder the generator reads: ``X_id`` [C, h, w] and the skip maps
    larger than it, deepest first."""

    feature_channels: int
    feature_size: tuple[int, int]
    skips: tuple[str, ...]
    skip_channels: tuple[int, ...]


def encoder_layout(backbone: nn.Module, input_size: int = 112) -> EncoderLayout:
    """Probe the encoder once (a zero image, eval mode, no gradient) for its maps: the skips are every feature
    output other than ``x_id``/``x_age`` with a larger spatial size than ``X_id``, deepest first."""
    names = tuple(getattr(backbone, "feature_names", ()))
    if ID_MAP not in names or AGE_MAP not in names:
        raise ValueError(
            f"face age synthesis needs an AIFR encoder whose features include {ID_MAP!r} and {AGE_MAP!r} "
            f"(forward(x, return_features=True)); model {type(backbone).__name__} gives {list(names) or 'none'}: "
            "set model= to an AIFR backbone"
        )
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            p = next(backbone.parameters())
            _, feats = backbone(
                torch.zeros(1, 3, input_size, input_size, device=p.device), return_features=True
            )
    finally:
        backbone.train(was_training)
    x_id = feats[ID_MAP]
    size = tuple(x_id.shape[-2:])
    skips = [
        (n, f)
        for n, f in feats.items()
        if n not in (ID_MAP, AGE_MAP) and f.dim() == 4 and f.shape[-1] > size[-1]
    ]
    skips.sort(key=lambda nf: nf[1].shape[-1])
    return EncoderLayout(
        int(x_id.shape[1]), size, tuple(n for n, _ in skips), tuple(int(f.shape[1]) for _, f in skips)
    )


# ------------------------------------------------------------------------------------- the age estimator
def age_to_group(ages: np.ndarray, groups: int) -> np.ndarray:
    """:func:`~faceforge.methods.mtlface.age.age2group` on a numpy array (the cut age belongs to the lower group)."""
    return age2group(torch.as_tensor(np.asarray(ages, dtype=np.float64)), groups).numpy()


class FrozenGroupHead(nn.Module):
    """``X_age -> group logits`` through a frozen age estimator (age logits over 0..100, then the Linear(101, G)
    group head), always in eval mode and without gradient for its weights."""

    def __init__(self, estimator: nn.Module) -> None:
        super().__init__()
        self.estimator = estimator.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenGroupHead:
        return super().train(False)

    def forward(self, x_age: Tensor) -> Tensor:
        return self.estimator(x_age)[1]


# --------------------------------------------------------------------------------------- target sampling
class TargetSampler:
    """Target groups and real faces of those groups for one step, seeded by ``(seed, step, rank)``.

    ``groups`` [B] are uniform over ``0..G−1``; for each, a training row whose age is in that group is drawn
    uniformly and read un-augmented, mirrored with probability ``flip``. An unreadable row is replaced by
    another draw (up to 20 times) and listed in :attr:`skipped`.
    """

    def __init__(
        self,
        dataset: Any,
        ages: np.ndarray,
        mask: np.ndarray,
        groups: int,
        seed: int,
        flip: float = 0.5,
        group_of: Callable[[np.ndarray, int], np.ndarray] | None = None,
    ) -> None:
        self.dataset, self.groups, self.seed, self.flip = dataset, int(groups), int(seed), float(flip)
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        group = (group_of or age_to_group)(np.asarray(ages)[rows], self.groups)
        self.rows = [rows[group == g] for g in range(self.groups)]
        self.skipped: list[str] = []
        empty = [g for g, r in enumerate(self.rows) if len(r) == 0]
        if empty:
            raise ValueError(
                f"face age synthesis needs real faces of every age group, but the training data has none with an "
                f"age in group(s) {empty} of {self.groups}: add a source with such ages (e.g. data.sources=[{{root: "
                "UTK_ALIGNED, labeller: utkface}]) or an age attribute file for data.attributes"
            )

    def counts(self) -> list[int]:
        return [len(r) for r in self.rows]

    def sample(self, step: int, n: int, rank: int = 0) -> tuple[Tensor, Tensor, np.ndarray]:
        """``(groups int64 [n], uint8 faces [n, H, W, 3], dataset rows [n])`` for optimiser step ``step``."""
        rng = np.random.default_rng((self.seed, int(step), int(rank), 0xFA5))
        groups = rng.integers(0, self.groups, size=n)
        faces, rows = [], []
        for g in groups:
            for _ in range(20):
                row = int(rng.choice(self.rows[g]))
                try:
                    face = self.dataset.image(row)
                    break
                except UnreadableImageError as exc:
                    self.skipped.append(f"{exc.path}: {exc.reason}")
            else:
                raise ValueError(
                    f"20 unreadable real faces in a row for age group {g}: check the training images"
                )
            if rng.random() < self.flip:
                face = face[:, ::-1]
            faces.append(np.ascontiguousarray(face))
            rows.append(row)
        return torch.from_numpy(groups.astype(np.int64)), torch.from_numpy(np.stack(faces)), np.asarray(rows)


# ------------------------------------------------------------------------------------------------ method
@METHODS.register("mtlface_fas")
class FaceAgeSynthesis(Method):
    """MTLFace's face age synthesis step (see the module doc). Options (``method.*``):

    ``aifr``: the AIFR checkpoint the encoder starts from (``run.init``; the packaged config sets
    ``method.aifr: ${run.init}``), whose ``estimator_objective`` objective (``age``) holds the frozen age
    estimator (:func:`~faceforge.methods.mtlface.age.load_age_estimator`);
    ``groups`` (7), ``units`` (128), ``sigma`` (0.1; TPAMI 1/8), ``blocks`` (4), ``decoder_channels`` (null: the
    skips' widths), ``final_channels`` (32) of the generator; ``disc_width`` (64), ``disc_layers`` (4) of the
    discriminator; loss weights ``gan_weight`` (75), ``id_weight`` (0.002), ``age_weight`` (10); Adam ``lr`` (1e-4)
    and ``betas`` ((0.5, 0.99)) for both; ``age_attribute`` (``age``); ``target_flip`` (0.5).
    """

    trains_backbone = False

    def __init__(
        self,
        ctx: MethodContext,
        *,
        aifr: str | None = None,
        estimator_objective: str = "age",
        groups: int = 7,
        units: int = 128,
        sigma: float = 0.1,
        blocks: int = 4,
        decoder_channels: list[int] | None = None,
        final_channels: int = 32,
        disc_width: int = 64,
        disc_layers: int = 4,
        gan_weight: float = 75.0,
        id_weight: float = 0.002,
        age_weight: float = 10.0,
        lr: float = 1e-4,
        betas: tuple[float, float] | list[float] = (0.5, 0.99),
        age_attribute: str = "age",
        target_flip: float = 0.5,
    ) -> None:
        super().__init__(ctx)
        if not aifr:
            raise ValueError(
                "method.aifr: face age synthesis needs the AIFR checkpoint (model.pt of a method=mtlface run) "
                "whose encoder and age estimator it freezes: set run.init=PATH (the packaged config copies it)"
            )
        self.options = {
            "aifr": str(aifr), "estimator_objective": estimator_objective, "groups": int(groups),
            "units": int(units), "sigma": float(sigma), "blocks": int(blocks),
            "decoder_channels": None if decoder_channels is None else [int(c) for c in decoder_channels],
            "final_channels": int(final_channels), "disc_width": int(disc_width), "disc_layers": int(disc_layers),
            "gan_weight": float(gan_weight), "id_weight": float(id_weight), "age_weight": float(age_weight),
            "lr": float(lr), "betas": [float(b) for b in betas], "age_attribute": age_attribute,
            "target_flip": float(target_flip),
        }  # fmt: skip
        self.weights = FASLossWeights(gan_weight, id_weight, age_weight)
        self.layout = encoder_layout(ctx.backbone, int(getattr(ctx.backbone, "input_size", 112)))
        self.generator = AgeGenerator(
            self.layout.feature_channels,
            self.layout.skip_channels,
            groups,
            units,
            sigma,
            blocks,
            final_channels,
            decoder_channels=decoder_channels,
        )
        self.discriminator = PatchDiscriminator(groups, disc_width, disc_layers)
        self.group_head = FrozenGroupHead(load_age_estimator(aifr, estimator_objective))
        if self.group_head.estimator.groups != int(groups):
            raise ValueError(
                f"method.groups={groups}, but the age estimator in {aifr} predicts {self.group_head.estimator.groups} "
                f"groups: set method.groups={self.group_head.estimator.groups}"
            )
        if ctx.attributes is None or age_attribute not in ctx.attributes.names:
            have = [] if ctx.attributes is None else ctx.attributes.names
            raise ValueError(
                f"face age synthesis draws real target faces by their {age_attribute!r} attribute, which no source "
                f"gives (have {have}): add data.sources=[{{root: UTK_ALIGNED, labeller: utkface}}] and/or "
                "data.attributes=AGES.csv"
            )
        ages, mask = ctx.attributes.numeric(age_attribute)
        self.targets = TargetSampler(ctx.dataset, ages, mask, groups, ctx.seed, target_flip)
        log.info("face age synthesis: real target faces per age group %s", self.targets.counts())

    # ------------------------------------------------------------------------------------------ parts
    def train(self, mode: bool = True) -> FaceAgeSynthesis:
        super().train(mode)
        self.group_head.train(False)
        return self

    def optimizers(self) -> dict[str, OptimizerSpec]:
        settings = {
            "name": "adam", "lr": self.options["lr"], "betas": self.options["betas"], "weight_decay": 0.0,
            "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": 0.0,
        }  # fmt: skip
        return {
            "generator": OptimizerSpec([self.generator], dict(settings)),
            "discriminator": OptimizerSpec([self.discriminator], dict(settings)),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": "mtlface_fas",
            **self.options,
            "skips": list(self.layout.skips),
            "skip_channels": list(self.layout.skip_channels),
            "feature_channels": self.layout.feature_channels,
            "target_faces_per_group": self.targets.counts(),
        }

    # ------------------------------------------------------------------------------------------ pieces
    def encode(self, engine: Any, x: Tensor) -> dict[str, Tensor]:
        """The frozen encoder's maps of a preprocessed batch (no gradient)."""
        with torch.no_grad():
            _, feats = engine.embed_with_features(x)
        return feats

    def synthesise(self, engine: Any, x: Tensor, feats: dict[str, Tensor], group: Tensor) -> Tensor:
        with engine.autocast():
            out = self.generator(x, feats[ID_MAP], [feats[n] for n in self.layout.skips], group)
        return out.float()

    def judge(self, engine: Any, x: Tensor, group: Tensor) -> Tensor:
        with engine.autocast():
            return self.discriminator(x, group).float()

    # ------------------------------------------------------------------------------------------ the step
    def step(self, engine: Any, batch: Batch) -> None:
        k = engine.accumulate
        groups, faces, _ = self.targets.sample(engine.step, len(batch), D.current().rank)
        x_src = engine.preprocess(batch.images)
        x_tgt = engine.preprocess(faces)
        target = groups.to(engine.device)
        micro = list(
            engine.micro_batches(Batch(x_src, batch.labels, batch.indices, [], batch.branch, batch.mirrored))
        )
        parts = list(zip(micro, x_tgt.chunk(k), target.chunk(k), strict=True))

        # discriminator: real faces of the target group vs the synthesised faces (detached)
        engine.zero_grad("discriminator")
        kept: list[tuple[dict[str, Tensor], Tensor | None]] = []
        for (mb, sync), xt, g in parts:
            with sync:
                feats = self.encode(engine, mb.images)
                fake = self.synthesise(engine, mb.images, feats, g)
                d_real, d_fake = self.judge(engine, xt, g), self.judge(engine, fake.detach(), g)
                loss_d = discriminator_loss(d_real, d_fake)
                engine.backward(loss_d / k, "discriminator")
            kept.append((feats, fake if k == 1 else None))
            engine.log(
                {
                    "fas/d_loss": float(loss_d.detach()),
                    "fas/d_real": float(d_real.detach().mean()),
                    "fas/d_fake": float(d_fake.detach().mean()),
                },
                1.0 / k,
            )
        engine.optimizer_step("discriminator")

        # generator: fool the updated discriminator, keep X_id, land in the target group
        engine.zero_grad("generator")
        self.discriminator.requires_grad_(False)
        try:
            for ((mb, sync), _, g), (feats, fake) in zip(parts, kept, strict=True):
                with sync:
                    if fake is None:
                        with held_bn_statistics(self.generator):
                            fake = self.synthesise(engine, mb.images, feats, g)
                    _, synth = engine.embed_with_features(fake)
                    with engine.autocast():
                        logits = self.group_head(synth[AGE_MAP])
                    terms = generator_losses(
                        self.judge(engine, fake, g),
                        feats[ID_MAP],
                        synth[ID_MAP],
                        logits.float(),
                        g,
                        self.weights,
                    )
                    engine.backward(terms["total"] / k, "generator")
                hit = float((logits.argmax(1) == g).float().mean())
                logs = {f"fas/{n}": float(v.detach()) for n, v in terms.items()}
                engine.log({**logs, "fas/age_hit": hit, "loss": float(terms["total"].detach())}, 1.0 / k)
        finally:
            self.discriminator.requires_grad_(True)
        engine.optimizer_step("generator")
