"""Config composition and validation: unknown keys, wrong types and unknown names stop with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.config import ConfigError, compose_config

BASE = "lfw_mobilefacenet_arcface"


def test_packaged_config_composes_with_overrides() -> None:
    cfg = compose_config(
        BASE, ["data.root=/x", "optim.lr=0.05", "head=cosface", "head.margin=0.3", "model.scale=2"]
    )
    assert cfg.data.root == "/x" and cfg.optim.lr == 0.05
    assert cfg.head.name == "cosface" and cfg.head.margin == 0.3
    assert cfg.model.name == "mobilefacenet" and cfg.model.scale == 2
    assert compose_config(BASE, ["data.root=/x", "model=iresnet18"]).model.name == "iresnet18"
    # scale is a MobileFaceNet argument: another backbone rejects it by name
    with pytest.raises(ConfigError, match="unknown key 'scale'"):
        compose_config(BASE, ["data.root=/x", "model=iresnet18", "model.scale=2"])
    assert cfg.data.exclude_pairs[0].endswith("lfw/pairsDevTest.txt")  # interpolation resolved
    assert cfg.run.max_steps == 0  # schema keys absent from the YAML can still be overridden
    assert compose_config(BASE, ["data.root=/x", "run.max_steps=3"]).run.max_steps == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], "lrr"),
        (["optim.lr=fast"], "optim.lr"),
        (["head.margn=0.3"], "unknown key 'margn'"),
        (["head.margin=big"], "head.margin"),
        (["model=nonexistent"], "nonexistent"),
        (["head.name=sphereface"], "unknown head 'sphereface'"),
        (["run.precision=fp8"], "run.precision"),
        (["optim.schedule=linear"], "optim.schedule"),
        (["data.augment.jitter={}"], "unknown augmentation 'jitter'"),
        (["head.num_classes=3"], "set by faceforge itself"),
    ],
)
def test_bad_configs_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose_config(BASE, ["data.root=/x", *overrides])


def test_missing_required_value_and_unknown_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.root"):
        compose_config(BASE, [])
    with pytest.raises(ConfigError, match="no config 'nope'"):
        compose_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        compose_config(str(tmp_path / "absent.yaml"))


def test_user_yaml_outside_the_package_uses_packaged_groups(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("defaults:\n  - model: iresnet50\n  - head: curricularface\n  - _self_\ndata:\n  root: /d\n")
    cfg = compose_config(str(f), ["head.alpha=0.1"])
    assert cfg.model.name == "iresnet50" and cfg.head.name == "curricularface" and cfg.head.alpha == 0.1
    f.write_text("data:\n  root: /d\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        compose_config(str(f))
