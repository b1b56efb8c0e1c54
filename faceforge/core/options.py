"""The rules of every command-line option and Python API argument that is a number, a choice or a list.

:data:`OPTION_RULES` maps an option's name (its argparse ``dest``: ``batch_size`` is ``--batch-size``) to its
:class:`~faceforge.core.rules.Rule`; an entry ``"COMMAND NAME"`` (``"serve workers"``) overrides the plain name
for one command. ``faceforge.cli.main`` makes each rule the ``type=`` of its option, so ``--batch-size -4``
stops before anything loads with ``argument --batch-size: -4 must be an integer in [1, 65536]``; the Python
API checks the same names with :func:`check_api` (``batch_size=-4 must be ...``). A numeric option without a
rule is a test failure (``tests/hostile/test_option_rules.py``).
"""

from __future__ import annotations

from typing import Any

from faceforge.core.image_formats import IMAGE_EXTENSIONS
from faceforge.core.rules import Rule, check_values

__all__ = ["DETECTOR_OPTION_RULES", "DEVICE_RULE", "OPTION_RULES", "check_api", "rule_for"]

#: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether device N exists is checked when the device is resolved)
DEVICE_RULE = Rule(str, pattern=r"auto|cpu|cuda(:[0-9]{1,3})?", pattern_text="one of auto, cpu, cuda, cuda:N")
SEED = Rule(int, 0, 2**32 - 1)
FRACTION = Rule(float, 0.0, 1.0)
COSINE = Rule(float, -1.0, 1.0)

OPTION_RULES: dict[str, Rule] = {
    # embedding and evaluation
    "batch_size": Rule(int, 1, 65536, note="faces read and embedded at a time (a CPU passes 32 at once)"),
    "device": DEVICE_RULE,
    "precision": Rule(str, choices=("auto", "fp32", "bf16", "fp16")),
    "folds": Rule(int, 2, 100),
    "min_valid": Rule(float, 0.0, 1.0, note="fraction of pairs or images that must be scored"),
    "ext": Rule(str, choices=IMAGE_EXTENSIONS),
    # photos -> aligned faces
    "size": Rule(int, 16, 2048, note="output face size in pixels"),
    "workers": Rule(int, 0, 1024, note="0: one per core"),
    "landmark_offset": Rule(list, item=float, count=2, note="DX,DY"),
    "min_score": Rule(float, 0.0, 1.0, optional=True),
    "min_quality": Rule(float, optional=True),
    # export
    "opset": Rule(int, 7, 23, note="ONNX opset: 18-23 with the dynamo exporter, 7-20 with torchscript"),
    "batch": Rule(int, 1, 65536, extra=("dynamic",)),
    "tolerance": Rule(float, 0.0, 1.0, low_open=True),
    # quality labels
    "m": Rule(int, 1, 10_000),
    "rounds": Rule(int, 1, 1000),
    "seed": SEED,
    # search and the service
    "min_det_score": FRACTION,
    "threshold": Rule(float, -1.0, 1.0, optional=True, note="a cosine similarity"),
    "fmr": Rule(float, 0.0, 1.0, low_open=True, high_open=True, optional=True, note="a false-match rate"),
    "k": Rule(int, 1, 10_000),
    "port": Rule(int, 0, 65535),
    "max_body_mb": Rule(float, 0.0, 4096.0, low_open=True),
    "max_pixels": Rule(int, 1, 2**31 - 1),
    "max_faces": Rule(int, 1, 10_000),
    "max_photos": Rule(int, 1, 10_000),
    "rate_limit": Rule(int, 0, 10**7, note="0: no limit"),
    "min_face_px": Rule(float, 0.0, 100_000.0),
    "serve min_quality": FRACTION,
    "hnsw_above": Rule(int, 0, 2**31 - 1, note="0: never"),
    "hnsw_m": Rule(int, 2, 256),
    "ef_construction": Rule(int, 1, 100_000),
    "ef_search": Rule(int, 1, 100_000),
    "serve workers": Rule(int, 1, 256, note="embedding threads"),
    "max_batch": Rule(int, 1, 65536),
    "max_wait_ms": Rule(float, 0.0, 60_000.0),
    "log_level": Rule(str, choices=("critical", "error", "warning", "info", "debug", "trace")),
    "ef_values": Rule(list, 1, 100_000),
    "queries": Rule(int, 1, 10**7),
    "query_cosine": COSINE,
    "threads": Rule(int, 1, 1024),
    # age synthesis
    "age_groups": Rule(list, 0, 1000, optional=True),
    "grid_rows": Rule(int, 1, 10_000),
    "per_identity": Rule(int, 1, 10_000),
    "id_threshold": COSINE,
    "age_margin": Rule(float, 0.0, 1000.0),
}


#: ``--detector-option`` values, for every detector that takes them (faceforge.deploy.detect.build_detector)
DETECTOR_OPTION_RULES: dict[str, Rule] = {
    "score_threshold": FRACTION,
    "nms_threshold": FRACTION,
    "stage_thresholds": Rule(list, 0.0, 1.0, item=float, count=2),
    "top_k": Rule(int, 1, 100_000),
    "max_side": Rule(int, 32, 65536),
    "min_side": Rule(int, 0, 65536),
    "min_face": Rule(float, 12.0, 100_000.0),
    "factor": Rule(float, 0.0, 1.0, low_open=True, high_open=True),
    "upsample": Rule(int, 0, 8),
}


def rule_for(name: str, command: str = "") -> Rule | None:
    """The rule of option ``name`` (a ``dest``) in ``command`` (``"serve"``, ``"serve recall"``), or None."""
    parts = command.split()
    for k in range(len(parts), 0, -1):  # the most specific command first: "serve recall", then "serve"
        hit = OPTION_RULES.get(f"{' '.join(parts[:k])} {name}")
        if hit is not None:
            return hit
    return OPTION_RULES.get(name)


def check_api(**values: Any) -> None:
    """Check Python API arguments by the command-line options' rules: ``check_api(batch_size=n, fmr=fmr)``."""
    check_values(OPTION_RULES, **values)
