"""The typed schema of a training configuration (dataclasses; no logic, no other faceforge imports).

:mod:`faceforge.config` composes YAML groups with Hydra and merges the result into :class:`TrainConfig`, so an
unknown key or a wrong type stops with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CPUs with bf16 units, fp16 on CUDA)
    channels_last: bool = True
    # torch.compile the backbone's training forward (and backward): null picks what measured faster on the device
    # (faceforge.core.precision.compile_default: off on CPU, see the README's numbers; off on CUDA until
    # benchmarks/gpu_check.py has measured it), true / false force it
    compile: bool | None = None
    ddp_fp16_compress: bool = False  # CUDA + torchrun: fp16 gradient compression hook on the DDP backbone
    gradient_checkpointing: bool = False  # recompute backbone blocks in backward (IResNet family)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    log_every: int = 20
    save_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    max_steps: int = (
        0  # stop (with a checkpoint) after this many optimiser steps in this process; 0: no limit
    )
    resume: str | None = None  # a checkpoint path, or "auto" for <dir>/checkpoints/last.pt if present
    # fine-tuning: start from the weights of a faceforge checkpoint (model.pt or last.pt, or one written by
    # 'faceforge import'); the optimiser, schedule, progress and distillation modules start fresh. Training and the
    # saved model use the checkpoint's preprocessing; model=from_init builds the checkpoint's own architecture.
    # run.resume, when it applies, wins.
    init: str | None = None
    init_head: bool = True  # also take its head's weights, if any (same head and number of classes needed)
    # run.init into another network that shares layers with the checkpoint's (e.g. a quality regressor's encoder
    # from a recognition model): copy the backbone weights whose names this backbone has (a shape mismatch
    # stops, naming the key); the others start fresh; both lists are logged and kept in the checkpoint metadata
    init_partial: bool = False
    progress: bool = True
    deterministic: bool = False
    # modules imported before the run is built, so objectives / methods / backbones they register can be named
    # in this config (e.g. plugins: [my_lab.methods]); they run as code: list only modules you trust
    plugins: list[str] = field(default_factory=list)
    cache_dir: str | None = None  # teacher-embedding cache (default: the eval cache); "none" disables it


@dataclass
class SourceConfig:
    """One more training source after the main one (faceforge.data.sources)."""

    root: str = "???"
    identities: bool = (
        False  # true: root/<identity>/<image>, new classes; false: any images, no identity (-1)
    )
    attributes: str | None = None  # CSV/TSV sidecar keyed by path relative to root (age, gender, group, ...)
    labeller: str | None = None  # file-name labeller (e.g. utkface)


@dataclass
class DataConfig:
    root: str = "???"  # folder/list: the image tree; rec: base of a relative data.rec; tfr_index: shard root
    # folder | list | rec | tfr_index (see faceforge.data.build); folder with list_file set reads the list
    format: str = "folder"
    list_file: str | None = None  # 'path label' list (paths relative to root); format=list, or folder + this
    rec: str | None = None  # format=rec: insightface/MXNet '.rec' path or '<prefix>' of <prefix>.rec/.idx
    index_file: str | None = None  # format=tfr_index: TFace index 'tfr_name tfr_index offset label'
    exclude_pairs: list[str] = field(default_factory=list)  # LFW pairs files whose people are left out
    min_images_per_identity: int = 1
    image_size: int = 112
    preload: bool = False  # decode every image once into memory (small data sets)
    num_workers: int = 2
    batch_size: int = 128
    augment: dict[str, Any] = field(default_factory=lambda: {"flip": {"p": 0.5}})
    attributes: str | None = None  # CSV/TSV sidecar of per-image attributes, keyed by path relative to root
    labeller: str | None = None  # file-name labeller of per-image attributes (e.g. utkface)
    sources: list[SourceConfig] = field(default_factory=list)  # more sources, e.g. faces without identities
    # stop when more than this fraction of the images read so far could not be used (unreadable or not aligned):
    # a few bad files are skipped and listed, a folder of them is a mistake to report
    max_skipped: float = 0.5


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = True  # no weight decay on BatchNorm/PReLU parameters and biases
    # instead of the rule above: no weight decay on parameters whose name contains one of these strings (TFace's
    # separate_*_bn_paras exempts names containing "bn" and decays everything else, PReLU and biases included)
    no_decay_names: list[str] | None = None
    epochs: int = 20
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    schedule: str = "poly"  # poly | step | cosine | constant
    power: float = 1.0  # poly
    milestones: list[float] = field(default_factory=list)  # step: epochs at which lr *= gamma
    gamma: float = 0.1
    min_lr: float = 0.0
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    # split each data.batch_size batch into this many micro-batches whose gradients add up before one
    # optimiser step: the same effective batch with 1/k of the activation memory
    accumulate_steps: int = 1


@dataclass
class EvalConfig:
    pairs: str | None = None  # LFW-format pairs file evaluated after training
    images: str | None = None  # aligned images for the pairs (default: data.root)
    # more benchmarks, as 'faceforge eval --benchmark' specs (lfw:PAIRS:IMAGES, bin:FILE, allpairs:IMAGES,
    # ident:IMAGES:K:MIN, ijb:DIR, ...); their summary numbers go to tensorboard as eval/<name>/<number>
    benchmarks: list[str] = field(default_factory=list)
    flip: bool = True
    every_epochs: int = 0  # also evaluate every N epochs (0: only at the end)
    batch_size: int = 128


@dataclass
class TeacherConfig:
    model: str = "???"  # an embedder: a faceforge checkpoint (.pt), an ONNX file (.onnx) or dlib
    name: str | None = None  # label in logs and reports (default teacher<i>)
    flip: bool = False  # teacher target = embedding of the face plus its mirror image (2x teacher time)
    # original: the teacher embeds the un-augmented face; student: it is cached on both the face and its mirror
    # image and each row reads the view the student's augmentation produced (TFace's EKD runs its teacher on
    # the student's batch; 2x teacher time once, then cached)
    view: str = "original"
    options: dict[str, Any] = field(default_factory=dict)  # extra embedder arguments (e.g. device)


@dataclass
class FinetuneConfig:
    """Fine-tuning options (faceforge.engine.finetune); every one also applies without run.init."""

    # the head's first weights: random (N(0, 0.01)) | class_mean (each identity's normalised mean embedding
    # under the initial backbone, eval mode, no augmentation: weight imprinting, Qi et al. CVPR 2018)
    head_init: str = "random"
    # class_mean only: the norm r of every imprinted row; null = the mean row norm of the head as built (N(0, 0.01)
    # rows: |w| ~ 0.01 sqrt(d)). A normalised head's row turns by ~ lr * grad / |w|^2, so small rows let the
    # head's first steps scramble the imprinted directions; 1.0 keeps them (the finetune recipe)
    head_row_norm: float | None = None
    # the backbone's learning rate = this x the schedule's (its own parameter groups); > 0
    backbone_lr_mult: float = 1.0
    # backbone parameter names to keep fixed, as fnmatch patterns ("conv1.*", "layer1.*"); a pattern matching
    # nothing stops the run. Frozen parameters leave the optimiser; a BN layer frozen whole keeps its statistics
    freeze: list[str] = field(default_factory=list)
    # batch-norm layers of the backbone: none | stats (eval mode while training: running statistics stay as
    # loaded) | all (stats, and their affine weight and bias frozen too)
    freeze_bn: str = "none"
    # train the head alone (backbone frozen, eval mode) for this many epochs first; < optim.epochs
    head_only_epochs: float = 0.0
    # then ramp the backbone's learning rate linearly from 0 to its full value over this many epochs
    backbone_warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mobilefacenet"})
    head: dict[str, Any] = field(default_factory=lambda: {"name": "arcface"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # instance name -> {type (default: the name), weight (default 1), options of the objective}; null removes one
    objectives: dict[str, Any] = field(default_factory=lambda: {"margin": {}})
    teachers: list[TeacherConfig] = field(
        default_factory=list
    )  # frozen embedders read by distillation objectives
    method: dict[str, Any] = field(
        default_factory=lambda: {"name": "standard"}
    )  # {name, options of the method}


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
