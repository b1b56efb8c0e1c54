"""Issue 17, items 1 and 2: one bad image never aborts prepare / align / embed; output names never collide.

Each test feeds real LFW photos mixed with broken files through the command line (in process) and checks
that the job finishes, every bad file is listed with its reason and every good one is processed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_files import encode, png_bomb, png_header_only, ppm_bomb, random_image

from faceforge.cli.main import main
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb, read_image_rgb


def _bad_images(folder: Path) -> dict[str, str]:
    """Write one file per broken kind into ``folder``; returns name -> a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ppm_bomb.png").write_bytes(ppm_bomb())
    (folder / "png_20000.png").write_bytes(png_header_only(20000, 20000))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    os.symlink("nowhere.jpg", folder / "dangling.jpg")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.mkfifo(folder / "fifo.jpg")
    return {
        "ppm_bomb.png": "pixels",
        "png_20000.png": "pixels",
        "empty.jpg": "empty",
        "text.jpg": "format",
        "dangling.jpg": "broken symbolic link",
        "loop_a.jpg": "loop",
        "loop_b.jpg": "loop",
        "fifo.jpg": "regular file",
    }


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the module's filter
def test_decode_checks_the_declared_size_before_allocating() -> None:
    assert len(ppm_bomb()) == 30
    for data, where in ((ppm_bomb(), "bomb.png"), (png_header_only(20000, 20000), "big.png")):
        with pytest.raises(UnreadableImageError, match="pixels") as info:
            decode_image_rgb(data, where)
        assert info.value.path == where
        assert "more than the limit" in info.value.reason
    # a complete, valid 10000x10000 PNG of 3 MB... would decode to 300 MB: refused from its header
    bomb = png_bomb(10000, 10000)
    assert len(bomb) < 1_000_000
    with pytest.raises(UnreadableImageError, match="10000x10000 = 100,000,000 pixels"):
        decode_image_rgb(bomb, "bomb.png")


def test_limit_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    small = encode(random_image(40, 30, 0))
    assert decode_image_rgb(small).shape == (40, 30, 3)
    monkeypatch.setenv("FACEFORGE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(UnreadableImageError, match="FACEFORGE_MAX_IMAGE_PIXELS"):
        decode_image_rgb(small)


def test_odd_but_valid_images_decode_to_rgb(tmp_path: Path) -> None:
    from hostile_files import animated_gif, cmyk_jpeg, grey_png, png16, rgba_png

    img = random_image(24, 20, 1)
    for name, data in {
        "cmyk.jpg": cmyk_jpeg(img),
        "grey.png": grey_png(img),
        "rgba.png": rgba_png(img),
        "deep.png": png16(img),
        "anim.gif": animated_gif(img),
        "one.png": encode(random_image(1, 1, 2)),
        "thin.png": encode(random_image(1, 1000, 3)),
    }.items():
        out = decode_image_rgb(data, name)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
    np.testing.assert_array_equal(decode_image_rgb(png16(img)), img)
    np.testing.assert_array_equal(decode_image_rgb(rgba_png(img)), img)


def test_read_image_names_the_file_for_every_failure(tmp_path: Path) -> None:
    expected = _bad_images(tmp_path)
    for name, word in expected.items():
        with pytest.raises(UnreadableImageError) as info:
            read_image_rgb(tmp_path / name)
        assert info.value.path == str(tmp_path / name) and word in info.value.reason, (name, info.value)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(UnreadableImageError, match="directory"):
        read_image_rgb(tmp_path / "dir.jpg")
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as fh:  # a sparse 4 GB file: nothing may read it into memory
        fh.truncate(4 << 30)
    with pytest.raises(UnreadableImageError, match="larger than"):
        read_image_rgb(sparse)


def _photo_tree(tmp_path: Path, lfw_photos: list[Path]) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "photos"
    for p in lfw_photos:
        (src / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / p.parent.name / p.name)
    bad = {f"Bad/{k}": v for k, v in _bad_images(src / "Bad").items()}
    tiny = src / "Tiny"
    tiny.mkdir()
    (tiny / "one.png").write_bytes(encode(random_image(1, 1, 0)))
    (tiny / "thin.png").write_bytes(encode(random_image(1, 1000, 1)))
    (tiny / "black_strip.png").write_bytes(encode(np.zeros((5, 1000, 3), np.uint8)))
    (src / "Dir.jpg").mkdir()  # a folder named like an image is searched, not read
    shutil.copy(lfw_photos[0], src / "Dir.jpg" / "inside.jpg")
    return src, bad


def test_prepare_skips_and_lists_every_bad_photo(
    tmp_path: Path, lfw_photos: list[Path], yunet_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, bad = _photo_tree(tmp_path, lfw_photos)
    out = tmp_path / "out"
    argv = ["prepare", "--images", str(src), "--out", str(out), "--no-progress"]
    assert main([*argv, "--detector-model", str(yunet_model)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "prepare_report.json").read_text())
    reasons = {u["file"]: u["reason"] for u in report["unreadable"]}
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons.get(name))
        assert name in printed
    small = {u["file"]: u["reason"] for u in report["too_small"]}
    assert set(small) == {"Tiny/one.png", "Tiny/thin.png"} and "1000x1" in small["Tiny/thin.png"]
    assert "Tiny/black_strip.png" in report["no_face"]
    for p in lfw_photos:
        face = read_image_rgb(out / p.parent.name / p.name)
        assert face.shape == (112, 112, 3)
    assert read_image_rgb(out / "Dir.jpg" / "inside.jpg").shape == (112, 112, 3)
    assert report["aligned_images"] == len(lfw_photos) + 1
    assert report["skipped"] == len(bad) + 3 and f"skipped {len(bad) + 3}" in printed


def test_align_skips_and_lists_every_bad_photo(
    tmp_path: Path, lfw_photos: list[Path], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, bad = _photo_tree(tmp_path, lfw_photos)
    rows = ["file,leye_x,leye_y,reye_x,reye_y,nose_x,nose_y,lmouth_x,lmouth_y,rmouth_x,rmouth_y"]
    shipped = (data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv").read_text().splitlines()
    head = shipped[0].split(",")
    cols = [head.index(c) for c in rows[0].split(",")]
    by_name = {ln.split(",")[0]: ln.split(",") for ln in shipped[1:]}
    for p in lfw_photos:
        rows.append(",".join(by_name[p.name][c] for c in cols))
    generic = "40,50,80,50,60,70,45,90,75,90"
    rows += [f"{name.split('/')[1]},{generic}" for name in bad]
    rows += [f"{n},{generic}" for n in ("one.png", "thin.png", "black_strip.png", "inside.jpg")]
    csv = tmp_path / "lm.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "aligned"
    argv = ["align", "--images", str(src), "--landmarks", str(csv), "--out", str(out), "--no-progress"]
    assert main([*argv, "--landmark-offset=-48,-48"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "align_report.json").read_text())
    reasons = {u["file"]: u["reason"] for u in report["unreadable"]}
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons.get(name))
        assert name in printed
    for p in lfw_photos:
        assert read_image_rgb(out / p.parent.name / p.name).shape == (112, 112, 3)
    assert report["aligned"] == len(lfw_photos) + 4  # the tiny and black images align (to black)


def test_embed_skips_and_lists_bad_faces(
    tmp_path: Path, lfw_small: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = tmp_path / "faces"
    good = sorted(lfw_small.rglob("*.jpg"))[:5]
    for f in good:
        (faces / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, faces / f.parent.name / f.name)
    # embed lists regular files only (cli/embed.py): the broken ones among them must be reported
    bad = {f"Bad/{k}": v for k, v in _bad_images(faces / "Bad").items() if (faces / "Bad" / k).is_file()}
    (faces / "Bad" / "small.png").write_bytes(encode(random_image(1, 1000, 0)))
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", str(tiny_checkpoint), "--images", str(faces), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    z = np.load(out if out.is_file() else out.with_suffix(".npz"), allow_pickle=False)
    names = {Path(n).name for n in z["names"].tolist()}
    assert names == {f.name for f in good}
    skipped = json.loads(str(z["meta"]))["skipped"]
    for name in [*bad, "Bad/small.png"]:
        assert any(Path(name).name in s for s in skipped), name
    assert "1000x1" in " ".join(skipped)
    assert "ppm_bomb.png" in printed


# ---------------------------------------------------------------------------------------------- item 2


def _collision_tree(tmp_path: Path, lfw_photos: list[Path]) -> Path:
    src = tmp_path / "P"
    (src / "Person").mkdir(parents=True)
    shutil.copy(lfw_photos[0], src / "Person" / "a.jpg")
    (src / "Person" / "a.png").write_bytes(encode(read_image_rgb(lfw_photos[1])))
    shutil.copy(lfw_photos[2], src / "Person" / "b.jpg")
    return src


def test_prepare_never_drops_a_photo_on_an_output_name_collision(
    tmp_path: Path, lfw_photos: list[Path], yunet_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _collision_tree(tmp_path, lfw_photos)
    # names a rerun must find again: one that is not UTF-8, one with a newline
    odd = [os.fsdecode(b"latin1_\xe9\xff.jpg"), "new\nline.jpg"]
    for name in odd:
        shutil.copy(lfw_photos[3], src / name)
    out = tmp_path / "out"
    argv = ["prepare", "--images", str(src), "--out", str(out), "--no-progress"]
    argv += ["--detector-model", str(yunet_model)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["aligned_images"] == 5 and report["kept_existing"] == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".jpg") == sorted(odd)
    outputs = sorted(p.name for p in (out / "Person").iterdir())
    assert outputs == ["a_jpg.jpg", "a_png.jpg", "b.jpg"]
    renamed = {r["file"]: r["output"] for r in report["renamed"]}
    assert renamed == {"Person/a.jpg": "Person/a_jpg.jpg", "Person/a.png": "Person/a_png.jpg"}
    assert "Person/a.png -> Person/a_png.jpg" in printed
    # the two faces are different people's: neither output is a copy of the other
    a_jpg, a_png = (read_image_rgb(out / "Person" / n) for n in ("a_jpg.jpg", "a_png.jpg"))
    assert np.abs(a_jpg.astype(int) - a_png.astype(int)).mean() > 10
    # running again keeps all five (renamed and odd names too), once each
    assert main(argv) == 0
    again = json.loads((out / "prepare_report.json").read_text())
    assert again["kept_existing"] == 5 and again["aligned_images"] == 0
    assert len(list(out.rglob("*.jpg"))) == 5


def test_align_never_drops_an_image_on_an_output_name_collision(
    tmp_path: Path, lfw_photos: list[Path], data_dir: Path
) -> None:
    from faceforge.data.align_folder import align_folder

    src = _collision_tree(tmp_path, lfw_photos)
    csv = tmp_path / "lm.csv"
    pts = "60,60,100,60,80,85,65,105,95,105"
    csv.write_text(
        "file,leye_x,leye_y,reye_x,reye_y,nose_x,nose_y,lmouth_x,lmouth_y,rmouth_x,rmouth_y\n"
        + "".join(f"Person/{n},{pts}\n" for n in ("a.jpg", "a.png", "b.jpg"))
    )
    report = align_folder(src, csv, tmp_path / "out", progress=False)
    assert report.aligned == 3 and report.kept_existing == 0
    assert sorted(p.name for p in (tmp_path / "out" / "Person").iterdir()) == [
        "a_jpg.jpg",
        "a_png.jpg",
        "b.jpg",
    ]
    assert {r["file"] for r in report.renamed} == {"Person/a.jpg", "Person/a.png"}


def test_yunet_finds_no_face_in_tiny_or_thin_images(yunet_model: Path, lfw_photos: list[Path]) -> None:
    """Below its coarsest stride YuNet returned NaN rows or huge boxes of score 1 (uninitialised output)."""
    from faceforge.deploy.detect import DETECTORS

    det = DETECTORS.build("yunet", model_path=yunet_model)
    rng = np.random.default_rng(0)
    for h, w in ((2, 2), (3, 3), (5, 1000), (2, 5000), (8, 8), (20, 400)):
        for img in (np.zeros((h, w, 3), np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)):
            for _ in range(3):  # the garbage was not even the same from one call to the next
                assert det(img) == [], (h, w)
    assert len(det(read_image_rgb(lfw_photos[0]))) == 1  # a real face is still found


def test_detections_with_landmarks_far_outside_their_box_are_dropped() -> None:
    """The garbage YuNet gave on a 20x400 image (box 25 px wide, "eyes" 40-60 px to its right) is no face; a real
    face's points inside its box, and a face cut by the image border, stay."""
    from faceforge.deploy.detect import Detection, finite_detections

    box = np.array([246.8, 6.8, 271.4, 31.0])
    garbage = np.array([[310.8, 25.2], [311.2, 49.0], [200.7, 34.8], [260.0, 20.0], [262.0, 25.0]])
    face = np.array([[253.0, 14.0], [265.0, 14.0], [259.0, 20.0], [254.0, 26.0], [264.0, 26.0]])
    at_border = face - np.array([0.0, 20.0])  # eyes above the image, still within one box height of the box
    dets = [Detection(box, 0.98, garbage), Detection(box, 0.9, face), Detection(box, 0.8, at_border)]
    assert [d.score for d in finite_detections(dets, (40, 400))] == [0.9, 0.8]


def test_jpeg_header_read_directly_agrees_with_pillow(data_dir: Path) -> None:
    """The JPEG frame header is read without Pillow (ten times faster); its size is Pillow's on real photos and
    on progressive, CMYK and odd-sized files, a hostile header is still refused before any allocation, and
    what the direct reader does not understand goes to Pillow as before."""
    import io

    import cv2
    from hostile_files import cmyk_jpeg
    from PIL import Image

    from faceforge.data.image_io import _jpeg_size, declared_size

    files = sorted((data_dir / "lfw" / "images").rglob("*.jpg"))[::400] + sorted(
        data_dir.glob("photos/*.jpg")
    )
    img = random_image(33, 17, 4)
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    baseline = cv2.imencode(".jpg", img)[1].tobytes()
    blobs = [f.read_bytes() for f in files] + [baseline, progressive, cmyk_jpeg(img)]
    assert len(blobs) > 30
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            assert _jpeg_size(data) == im.size
    assert _jpeg_size(progressive) == (17, 33) and _jpeg_size(encode(img)) is None  # (a PNG: Pillow's)
    # a frame header declaring 60000 x 50000 after an APP0 segment: refused from the header
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0\x00\x11\x08" + (50000).to_bytes(2, "big") + (60000).to_bytes(2, "big") + bytes(12)
    with pytest.raises(UnreadableImageError, match="60000x50000 = 3,000,000,000 pixels"):
        declared_size(b"\xff\xd8" + app0 + sof, "big.jpg")
    for odd in (
        b"\xff\xd8",
        b"\xff\xd8\xff\xda\x00\x02",
        b"\xff\xd8" + app0[:6],
        b"\xff\xd8\x00\x00\x00\x00",
    ):
        assert _jpeg_size(odd) is None  # left to Pillow, which refuses these
        with pytest.raises(UnreadableImageError):
            declared_size(odd, "odd.jpg")
