"""The default detector's model ships inside the package: the file is the pinned one, its licence travels with it,
and the default detector is built from it whatever FACEFORGE_DATA says."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.core.hashing import file_sha256
from faceforge.deploy import detect


def test_packaged_yunet_is_the_pinned_file_with_its_licence() -> None:
    assert file_sha256(detect.YUNET_PACKAGED) == detect.YUNET_SHA256
    licence = (detect.YUNET_PACKAGED.parent / "LICENSE-yunet.txt").read_text()
    assert "MIT License" in licence and detect.YUNET_SHA256 in licence
    assert detect.default_yunet_model() == detect.YUNET_PACKAGED


def test_default_detector_needs_no_data_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path / "nothing here"))
    assert detect.build_detector("yunet").model_path == detect.YUNET_PACKAGED
    monkeypatch.setattr(detect, "YUNET_PACKAGED", tmp_path / "gone.onnx")
    with pytest.raises(FileNotFoundError, match=r"pip install --force-reinstall --no-deps faceforge"):
        detect.build_detector("yunet")
