"""Fixtures of the hostile-input tests: a small untrained checkpoint and real LFW photos."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_files import checkpoint_dict

YUNET = "face_detection_yunet_2026may.onnx"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MobileFaceNet (64-d) saved as a faceforge checkpoint: enough to run embed and eval."""
    from faceforge.core.checkpoint import atomic_torch_save

    return atomic_torch_save(checkpoint_dict(64), tmp_path_factory.mktemp("tiny_ckpt") / "model.pt")


@pytest.fixture(scope="session")
def yunet_model(data_dir: Path) -> Path:
    model = data_dir / "models" / YUNET
    if not model.is_file():
        pytest.skip(f"YuNet model not found at {model}")
    return model


@pytest.fixture(scope="session")
def lfw_photos(data_dir: Path) -> list[Path]:
    """Raw LFW photos (250x250 crops as shipped) of a few people, one per person."""
    src = data_dir / "lfw" / "images"
    people = ["Aaron_Eckhart", "Serena_Williams", "Colin_Powell", "Tony_Blair"]
    return [src / p / f"{p}_0001.jpg" for p in people]
