"""Issue 17, item 6: ``eval --compare`` embeds only image files inside the result's own folder."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hostile_files import encode, random_image

from faceforge.cli.main import main


def _result(folder: Path, plots: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rec = {
        "name": "lfw:pairs",
        "kind": "lfw",
        "summary": {"accuracy": 0.9},
        "plots": plots,
    }
    path = folder / "result.json"
    path.write_text(json.dumps({"format": "faceforge-eval/1", "model": {}, "benchmarks": {"lfw:pairs": rec}}))
    return path


def test_compare_embeds_only_images_inside_the_result_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    outside_png = tmp_path / "outside.png"
    outside_png.write_bytes(encode(random_image(20, 20, 1)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "ok.png").write_bytes(encode(random_image(20, 20, 2)))
    (run / "fake.png").write_text("not an image at all")
    (run / "spoofed.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"password=hunter2\n")
    os.symlink(outside_png, run / "link.png")
    os.symlink(secret, run / "secret_link.png")
    result = _result(
        run,
        {
            "passwd": "/etc/passwd",
            "secret": str(secret),
            "up": "../outside.png",
            "fake": "fake.png",
            "spoofed": "spoofed.png",
            "link": "link.png",
            "secret_link": "secret_link.png",
            "ok": "ok.png",
        },
    )
    page = tmp_path / "compare.html"
    assert main(["eval", "--compare", str(result), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert text.count("data:image/") == 1
    assert base64.b64encode((run / "ok.png").read_bytes()).decode() in text
    for leaked in (Path("/etc/passwd"), secret, outside_png):
        if leaked.is_file():
            assert base64.b64encode(leaked.read_bytes()).decode() not in text
    assert base64.b64encode(b"password=hunter2").decode()[:16] not in text
    for name in ("/etc/passwd", "secret.txt", "../outside.png", "fake.png", "spoofed.png", "link.png"):
        assert name in text
    assert "outside the result" in text and "not a PNG or JPEG image" in text
    assert "7 plot(s) not embedded" in printed
