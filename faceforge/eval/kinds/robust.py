"""``robust:PAIRS:IMAGES[:OPTIONS]``: verification under a white-box L∞ attack, per attack budget ε.

An LFW-format pairs file over aligned faces, as the ``lfw`` kind. Of each pair the second face (the probe) is
attacked with PGD or FGSM against the model itself (:func:`faceforge.embedders.differentiable.attack_pairs`: in
the model's input space after its preprocessing, clamped to valid pixels, against the flip-summed embedding that
is scored): genuine pairs are pushed apart, impostor pairs pulled together. The verification threshold is fixed
once on the clean pairs (:mod:`faceforge.eval.robustness`), and accuracy, TAR and FAR at that threshold are
reported for every ε, with a plot. Only networks faceforge runs in PyTorch can be attacked: dlib and ONNX files
are refused before anything runs, with the way to attack them (import them as a faceforge checkpoint).

``OPTIONS`` (comma-separated, the last ``:`` field): attack budgets as fractions of the pixel range (``0``,
``8/255`` or ``0.0314``; default ``0,1/255,2/255,4/255,8/255``) and settings ``attack=pgd|fgsm`` (default pgd),
``steps=N`` (PGD iterations, default 10), ``step=A`` (step size as a multiple of ε, default 2.5/steps),
``start=random|zero`` (default random), ``threshold=accuracy|far=X`` (how the clean threshold is chosen,
default accuracy), ``maxpairs=N`` (a seeded subset of at most N pairs, half genuine, to bound the cost of the
attack), ``seed=S`` (subset and random start, default 0). Example::

    faceforge eval --model run/model.pt --benchmark "robust:pairsDevTest.txt:aligned:0,2/255,8/255,steps=5"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceforge.data.image_io import UnreadableImageError, decode_image_rgb, read_image_bytes
from faceforge.data.pairs import read_lfw_pairs, resolve_pairs
from faceforge.embedders.differentiable import attack_pairs, embed_faces, face_network
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    CHECKSUM_RULE_USED,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
    check_valid,
    file_sha256,
    flip_text,
    folder_checksum,
    require_dir,
    require_file,
    two_paths,
)
from faceforge.eval.plots import plot_lines
from faceforge.eval.robustness import fixed_threshold, parse_threshold_rule, rates_at, subset_pairs
from faceforge.models.attacks import AttackSettings, EpsilonError, parse_epsilon

__all__ = ["DEFAULT_EPSILONS", "RobustKind"]

DEFAULT_EPSILONS = "0,1/255,2/255,4/255,8/255"
SETTINGS = ("attack", "steps", "step", "start", "threshold", "maxpairs", "seed")


def _is_options(text: str) -> bool:
    """The last ``:`` field is the options field when its first item is a setting or a number (``8/255``)."""
    first = text.split(",", 1)[0].strip()
    if first.partition("=")[0] in SETTINGS:
        return True
    num, sep, den = first.partition("/")
    try:
        float(num)
        if sep:
            float(den)
    except ValueError:
        return False
    return True


def eps_label(eps: float) -> str:
    """``8/255`` for a whole number of grey levels, else the number."""
    levels = eps * 255.0
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def parse_robust_options(spec: str, text: str | None) -> tuple[tuple[str, str], ...]:
    """The options field -> ``(("eps", "0,0.0039..."), ("attack", "pgd"), ...)``, every part checked."""
    eps: list[float] = []
    opts: dict[str, str] = {}
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep and key in SETTINGS:
            opts[key] = value.strip()
            continue
        if sep:
            raise BenchmarkSpecError(spec, f"unknown setting {key!r} (settings: {', '.join(SETTINGS)})")
        try:
            eps.append(parse_epsilon(item))
        except EpsilonError as exc:
            raise BenchmarkSpecError(spec, str(exc)) from None
    if not eps:
        eps = [parse_epsilon(e) for e in DEFAULT_EPSILONS.split(",")]
    if opts.get("attack", "pgd") not in ("pgd", "fgsm"):
        raise BenchmarkSpecError(spec, f"attack={opts['attack']}: use pgd or fgsm")
    if opts.get("start", "random") not in ("random", "zero"):
        raise BenchmarkSpecError(spec, f"start={opts['start']}: use random or zero")
    for key, low in (("steps", 1), ("maxpairs", 2), ("seed", 0)):
        if key in opts and not (opts[key].isdigit() and int(opts[key]) >= low):
            raise BenchmarkSpecError(spec, f"{key}={opts[key]} must be an integer >= {low}")
    if "step" in opts:
        try:
            ok = float(opts["step"]) > 0
        except ValueError:
            ok = False
        if not ok:
            raise BenchmarkSpecError(spec, f"step={opts['step']} must be a number > 0 (a multiple of ε)")
    try:
        parse_threshold_rule(opts.get("threshold", "accuracy"))
    except ValueError as exc:
        raise BenchmarkSpecError(spec, str(exc)) from None
    listed = ",".join(repr(e) for e in sorted(set(eps)))
    return (("eps", listed), *sorted(opts.items()))


def attack_settings(b: BenchmarkSpec) -> AttackSettings:
    if b.option("attack", "pgd") == "fgsm":
        return AttackSettings(steps=1, step_size=1.0, random_start=False)
    step = b.option("step", "")
    return AttackSettings(
        steps=int(b.option("steps", "10")),
        step_size=float(step) if step else None,
        random_start=b.option("start", "random") == "random",
    )


@BENCHMARK_KINDS.register("robust")
class RobustKind(BenchmarkKind):
    name = "robust"
    usage = "robust:PAIRS:IMAGES[:EPS,...,attack=pgd|fgsm,steps=N,maxpairs=N]"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts = rest.split(":")
        field = parts.pop() if len(parts) >= 3 and _is_options(parts[-1]) else None
        pairs, images = two_paths(self.name, spec, ":".join(parts), "PAIRS:IMAGES[:OPTIONS]")
        options = parse_robust_options(spec, field)
        return BenchmarkSpec(
            self.name, (pairs, images), spec=spec, name=f"{self.name}:{Path(pairs).stem}", options=options
        )

    def check(self, b: BenchmarkSpec) -> None:
        require_file(b, b.paths[0], "pairs file")
        require_dir(b, b.paths[1])

    def check_model(self, b: BenchmarkSpec, embedder: Any) -> None:
        face_network(embedder)  # refuses dlib, ONNX files and anything else without input gradients

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        pairs = read_lfw_pairs(b.paths[0])
        p1, p2, issame = resolve_pairs(pairs, b.paths[1], ext=image_ext)
        maxpairs = b.option("maxpairs", "")
        keep = subset_pairs(issame, int(maxpairs) if maxpairs else None, int(b.option("seed", "0")))
        p1s, p2s = [str(p1[i]) for i in keep], [str(p2[i]) for i in keep]
        # no shared embedding pass: clean and attacked embeddings come from the same differentiable network
        return {"p1": p1s, "p2": p2s, "issame": issame[keep], "n_pairs_file": len(pairs), "unique_files": []}

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        net = face_network(ctx.embedder)
        size = net.preprocess.input_size
        faces: dict[str, np.ndarray | None] = {}
        failed: list[str] = []
        for f in dict.fromkeys(plan["p1"] + plan["p2"]):
            try:
                img = decode_image_rgb(read_image_bytes(f), f)
            except UnreadableImageError as exc:
                failed.append(f"{exc.path}: {exc.reason}")
                img = None
            if img is not None and img.shape[:2] != (size, size):
                failed.append(f"{f}: is {img.shape[1]}x{img.shape[0]}, the model takes {size}x{size} faces")
                img = None
            faces[f] = img
        ok = np.array(
            [
                faces[a] is not None and faces[c] is not None
                for a, c in zip(plan["p1"], plan["p2"], strict=True)
            ]
        )
        validity = check_valid(ctx.name, int(ok.sum()), int(ok.size), "pairs", ctx.min_valid_fraction, failed)
        rows = np.flatnonzero(ok)
        first = np.stack([faces[plan["p1"][i]] for i in rows])
        second = np.stack([faces[plan["p2"][i]] for i in rows])
        issame = np.asarray(plan["issame"], bool)[rows]
        bs = min(ctx.batch_size, 64)
        ref = embed_faces(net, first, ctx.flip, bs)
        clean = np.sum(ref * embed_faces(net, second, ctx.flip, bs), axis=1)
        threshold = fixed_threshold(clean, issame, b.option("threshold", "accuracy"))
        settings = attack_settings(b)
        seed = int(b.option("seed", "0"))
        per_eps: list[dict[str, Any]] = []
        for eps in (float(e) for e in b.option("eps", "0.0").split(",")):
            if eps == 0:
                scores, linf = clean, np.zeros(len(rows))
            else:
                emb, linf = attack_pairs(net, ref, second, issame, eps, settings, ctx.flip, bs, seed)
                scores = np.sum(ref * emb, axis=1)
            rates = rates_at(scores, issame, threshold["threshold"])
            linf_max = float(np.max(linf)) if len(linf) else 0.0
            per_eps.append({"eps": eps, "eps_label": eps_label(eps), **rates, "max_linf_pixels": linf_max})
        pairs_file, images = b.paths
        rec: dict[str, Any] = {
            "benchmark": {
                "kind": "lfw-pairs under attack",
                "pairs_file": str(pairs_file),
                "pairs_sha256": file_sha256(pairs_file),
                "images_dir": str(images),
                "images_sha256": folder_checksum(images, [Path(p) for p in faces]),
                "images_checksum_rule": CHECKSUM_RULE_USED,
                "n_pairs_file": plan["n_pairs_file"],
                "n_pairs": len(plan["issame"]),
                "unreadable_images": failed,
            },
            "validity": validity,
            "settings": {
                "protocol": "verification under a white-box attack, threshold fixed on the clean pairs",
                "attack": {"name": b.option("attack", "pgd"), **settings.describe()},
                "attacked_face": "the second face of each pair; the first is the clean reference",
                "objective": "genuine pairs: minimise cosine (dodging); impostor pairs: maximise it (impersonation)",
                "input_space": "the model's own, after its preprocessing (x = (pixel/255 - mean) / std)",
                "eps_unit": "fraction of the pixel range [0, 1] (8/255 = eight grey levels)",
                "threshold": threshold,
                "flip": flip_text(ctx.flip),
                "precision": net.precision,
                "subset": {
                    "maxpairs": b.option("maxpairs", "all"),
                    "seed": seed,
                    "rule": "half genuine, half impostor, without replacement",
                },
                **ctx.preprocess_settings(),
            },
            "per_eps": per_eps,
            "summary": {
                **{f"accuracy@eps={r['eps_label']}": r["accuracy"] for r in per_eps},
                **{f"tar@eps={r['eps_label']}": r["tar"] for r in per_eps},
                **{f"far@eps={r['eps_label']}": r["far"] for r in per_eps},
            },
        }
        if plot_dir is not None:
            x = [r["eps"] * 255 for r in per_eps]
            curves = {k: [r[k] for r in per_eps] for k in ("accuracy", "tar", "far")}
            rec["plots"] = {
                "robustness": str(
                    plot_lines(x, curves, plot_dir / "robustness.png", f"Under attack: {ctx.name}",
                               "attack budget ε (grey levels of 255)", "rate at the clean threshold")
                )
            }  # fmt: skip
        return rec
