"""Issues 17 and 30, "done when": a corpus of 500+ broken and hostile inputs, generated here at test time and
mixed with real LFW photos, through ``prepare``, ``align``, ``embed``, ``eval``, ``train``, ``quality``,
``search``, ``export-onnx`` and every validated option on the command line, one class of issue 30 each:
tracebacks (1), hangs (2), one bad item ending a job (3), silent drops (4), wrong success (5), memory (6),
misleading messages (7) and the compare report's files (8).

Asserted: no traceback anywhere (stdout, stderr, native stderr), no hang (each step runs under an alarm of
:data:`STEP_LIMIT_S` seconds), every exit code as documented (0 for a job that skipped bad items, 2 for a
refused input), every bad item listed with a reason (and every input accounted for exactly once, counted
here from the files, not from the implementation's totals), every good item processed (its output exists),
no NaN model accepted, no pickle payload executed, and the peak memory of the process running all of it
bounded (its address space is capped, its peak RSS is checked).

All inputs, including the aligned faces that ``embed`` and ``eval`` read, are built before anything runs,
so the steps do not depend on each other. Every command then runs in one child Python (importing torch
once keeps this test near a minute) that calls ``faceforge.cli.main.main(argv)`` per step, captures what
each step prints and writes the results as JSON. To add a command, write a ``<command>_steps(corpus,
paths)`` function returning :class:`Step` objects and list it in :data:`COMMAND_STEPS`; a step names its
argv, its expected exit code and a check run (in this process) on its result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_files import (
    animated_gif,
    bin_bytes8_bomb,
    bin_ndarray_bomb,
    bin_of,
    bin_payload,
    checkpoint_dict,
    child_env,
    cmyk_jpeg,
    encode,
    grey_png,
    hostile_checkpoints,
    pil_bytes,
    png16,
    png_bomb,
    png_header_only,
    png_stripes,
    ppm_bomb,
    random_bytes,
    random_image,
    rgba_png,
    truncated,
)
from PIL import Image

from faceforge.cli.main import printable

ADDRESS_SPACE_CAP_GB = 6.0  # the child dies with MemoryError rather than swap the machine
# torch, MobileFaceNet training and eval, an 88-megapixel PNG: 1.4 GB measured when this file runs alone, 3.8 GB
# once inside the whole suite on a loaded CI machine (cause not found; the message names the top steps); the
# unbounded case this guards against (sharpness on the full 88-megapixel frame) took 4.75 GB in one step
PEAK_RSS_LIMIT_MB = 4500
STEP_LIMIT_S = 120  # one step past this is a hang (the slowest, prepare over the corpus, takes ~15 s)
#: image extensions as this test counts them (independently of the implementation's list)
COUNTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif")
N_PEOPLE, PER_PERSON = 12, 3  # real LFW photos: 36
LM_COLUMNS = ("leye_x", "leye_y", "reye_x", "reye_y", "nose_x", "nose_y", "lmouth_x", "lmouth_y")
LM_COLUMNS += ("rmouth_x", "rmouth_y")
GENERIC_POINTS = [108, 110, 146, 112, 126, 140, 106, 160, 142, 162]  # in 250 px LFW coordinates


@dataclass
class Corpus:
    root: Path
    photos: Path  # raw photo tree: real LFW photos, odd-but-valid images and hostile files
    good: list[Path] = field(default_factory=list)  # real LFW photos (must always be processed)
    odd_valid: list[Path] = field(default_factory=list)  # CMYK, 16-bit, grey, ...: must decode
    hostile: dict[str, str] = field(default_factory=dict)  # photo path (relative) -> kind
    bad_rows: int = 0
    bin_items: int = 0
    checkpoints: list[Path] = field(default_factory=list)
    plots: int = 0
    marker: Path | None = None
    options: int = 0  # bad option values, overrides and config files (one step each)

    @property
    def n_hostile(self) -> int:
        n = len(self.hostile) + self.bad_rows + self.bin_items + len(self.checkpoints) + self.plots
        return n + self.options


@dataclass
class Step:
    name: str
    argv: list[str]
    rc: int
    check: Callable[[Corpus, dict], None] | None = None


# ------------------------------------------------------------------------------------------------ corpus


def _lfw_photos(data_dir: Path) -> list[Path]:
    src = data_dir / "lfw" / "images"
    people = sorted(p for p in src.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= PER_PERSON)
    return [f for p in people[:N_PEOPLE] for f in sorted(p.glob("*.jpg"))[:PER_PERSON]]


def _write(path: Path, data: bytes, corpus: Corpus, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    corpus.hostile[path.relative_to(corpus.photos).as_posix()] = kind


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker is patched to declare ``width`` x ``height``."""
    i = next(i for i in range(2, len(jpeg) - 9) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    return jpeg[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[i + 9 :]


def build_corpus(root: Path, data_dir: Path) -> Corpus:
    photos = root / "photos"
    c = Corpus(root, photos)
    lfw = _lfw_photos(data_dir)
    for f in lfw:
        dst = photos / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
        c.good.append(dst)
    jpegs = [f.read_bytes() for f in lfw[:6]]
    faces = [np.asarray(Image.open(f).convert("RGB")) for f in lfw[:6]]
    junk = photos / "Junk"

    # truncated JPEG and PNG files: 19 cut points of 6 photos, 9 of 2 PNGs
    for k, data in enumerate(jpegs):
        for frac in np.linspace(0.05, 0.95, 19):
            _write(junk / f"trunc_{k}_{int(frac * 100):02d}.jpg", truncated(data, frac), c, "truncated")
    for k, img in enumerate(faces[:2]):
        for frac in np.linspace(0.1, 0.9, 9):
            _write(
                junk / f"trunc_{k}_{int(frac * 100):02d}.png", truncated(encode(img), frac), c, "truncated"
            )
    # empty, random and text files under image names
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif"):
        _write(junk / f"empty{ext}", b"", c, "unreadable")
    for k in range(120):
        ext = (".jpg", ".png", ".bmp", ".tiff", ".gif", ".webp")[k % 6]
        _write(junk / f"random_{k}{ext}", random_bytes(1 + 37 * k, k), c, "unreadable")
    for k, text in enumerate(["hello", "<html></html>", "%PDF-1.4", "\x89PNG but not really", "GIF89a"]):
        _write(junk / f"text_{k}.jpg", text.encode(), c, "unreadable")
    _write(junk / "bad\nname.jpg", b"a newline in the name", c, "unreadable")
    # declared sizes beyond the limit: header-only files and a complete, valid 10000x10000 PNG
    _write(junk / "ppm_bomb.png", ppm_bomb(), c, "unreadable")
    _write(junk / "ppm_bomb.ppm", ppm_bomb(), c, "unreadable")
    _write(junk / "ppm_bomb.jpg", ppm_bomb(), c, "unreadable")
    for w, h in ((20000, 20000), (65535, 65535), (2**31 - 1, 1), (1, 2**31 - 1)):
        _write(junk / f"png_{w}x{h}.png", png_header_only(w, h), c, "unreadable")
    _write(junk / "png_bomb_10000.png", png_bomb(10000, 10000), c, "unreadable")
    for w, h in ((65500, 65500), (60000, 30000)):
        _write(junk / f"jpeg_{w}x{h}.jpg", _jpeg_with_size(jpegs[0], w, h), c, "unreadable")
    sparse = junk / "sparse_4GB.jpg"
    with open(sparse, "wb") as fh:
        fh.truncate(4 << 30)
    c.hostile[sparse.relative_to(photos).as_posix()] = "unreadable"
    # valid but tiny or degenerate images
    tiny = photos / "Tiny"
    for h, w in ((1, 1), (1, 1000), (1000, 1), (1, 2)):
        _write(tiny / f"tiny_{w}x{h}.png", encode(random_image(h, w, h * w)), c, "too_small")
    for h, w in ((2, 2), (3, 3), (8, 8)):
        _write(tiny / f"small_{w}x{h}.png", encode(np.zeros((h, w, 3), np.uint8)), c, "skipped")
    # black strips: valid images a detector must survive; whether it reports a (false) face there is the
    # detector's answer (YuNet on the padded 1280x32 search copy once gave one in a loaded full-suite run)
    for h, w in ((5, 1000), (2, 5000)):
        _write(tiny / f"small_{w}x{h}.png", encode(np.zeros((h, w, 3), np.uint8)), c, "any")
    _write(tiny / "noise_64.png", encode(random_image(64, 64, 7)), c, "any")  # a detector may see a face
    # odd but valid encodings of real faces: must decode (and are faces)
    odd = photos / "Odd"
    for k, img in enumerate(faces[:3]):
        variants = {
            f"cmyk_{k}.jpg": cmyk_jpeg(img),
            f"deep16_{k}.png": png16(img),
            f"rgba_{k}.png": rgba_png(img),
            f"grey_{k}.png": grey_png(img),
            f"grey_{k}.jpg": pil_bytes(Image.fromarray(img).convert("L"), "JPEG"),
            f"anim_{k}.gif": animated_gif(img),
            f"face_{k}.bmp": encode(img, ".bmp"),
            f"face_{k}.tiff": encode(img, ".tiff"),
            f"face_{k}.webp": encode(img, ".webp"),
            f"face_{k}.ppm": encode(img, ".ppm"),
            f"png_named_{k}.jpg": encode(img, ".png"),  # content and extension disagree
        }
        for name, data in variants.items():
            _write(odd / name, data, c, "odd_valid")
            c.odd_valid.append(odd / name)
    # awkward names on real photos: spaces, unicode, newline, bytes that are not UTF-8
    names = ["with space.jpg", "ünïcødé_日本.jpg", "new\nline.jpg", "tab\there.jpg", "quote'\"s.jpg"]
    names += [os.fsdecode(b"latin1_\xe9\xff.jpg"), " leading.jpg", "-dash.jpg"]
    for k, name in enumerate(names):
        dst = photos / "Names" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw[k], dst)
        c.good.append(dst)
        c.hostile[dst.relative_to(photos).as_posix()] = "name"
    # links, loops, special files, folders named like images
    links = photos / "Links"
    links.mkdir()
    for k in range(3):
        os.symlink(f"loop_{k}_b.jpg", links / f"loop_{k}_a.jpg")
        os.symlink(f"loop_{k}_a.jpg", links / f"loop_{k}_b.jpg")
        c.hostile[f"Links/loop_{k}_a.jpg"] = c.hostile[f"Links/loop_{k}_b.jpg"] = "unreadable"
        os.symlink(f"/nonexistent/{k}.jpg", links / f"dangling_{k}.jpg")
        c.hostile[f"Links/dangling_{k}.jpg"] = "unreadable"
    os.symlink("..", links / "up_dir")  # a link to a folder above: never followed
    os.symlink("/etc/passwd", links / "passwd.jpg")
    c.hostile["Links/passwd.jpg"] = "unreadable"
    os.mkfifo(links / "fifo.jpg")
    c.hostile["Links/fifo.jpg"] = "unreadable"
    folder = photos / "Folder" / "looks_like.jpg"
    folder.mkdir(parents=True)
    shutil.copy(lfw[0], folder / "inside.jpg")
    c.good.append(folder / "inside.jpg")
    # output-name collisions: different photos whose outputs would share a name
    coll = photos / "Collide"
    coll.mkdir()
    for k, ext in enumerate((".jpg", ".png", ".jpeg", ".bmp")):
        dst = coll / f"same{ext}"
        dst.write_bytes(jpegs[k] if ext in (".jpg", ".jpeg") else encode(faces[k], ext))
        c.good.append(dst)
        c.hostile[dst.relative_to(photos).as_posix()] = "collision"
    return c


def build_landmarks(c: Corpus, data_dir: Path) -> tuple[Path, Path]:
    """landmarks.csv: the shipped points of every real photo, generic points for every other file, and
    malformed rows; and a Latin-1 copy (not UTF-8)."""
    shipped = {}
    with open(data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            shipped[row["file"]] = [row[k] for k in LM_COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", *LM_COLUMNS])
    originals = {p.name for p in _lfw_photos(data_dir)}
    for p in sorted(c.photos.rglob("*")):
        rel = p.relative_to(c.photos).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            continue  # cannot be named in a UTF-8 file: listed as "no landmarks"
        pts = shipped[p.name] if p.name in originals else GENERIC_POINTS
        w.writerow([rel, *pts])
    bad = [
        ["short.jpg", "1", "2", "3"],
        ["long.jpg", *GENERIC_POINTS, "99"],
        ["", *GENERIC_POINTS],
    ]
    for k, value in enumerate(["nan", "inf", "-inf", "1e300", "-1e300", "abc", "", "1,5", "0x10", "NaN"]):
        for col in (0, 5, 9):
            pts = [str(v) for v in GENERIC_POINTS]
            pts[col] = value
            bad.append([f"bad_{k}_{col}.jpg", *pts])
    for k in range(10):
        bad.append([f"same_{k}.jpg", *([str(50 + k)] * 10)])  # five identical points
        bad.append([f"near_{k}.jpg", *[str(50 + 1e-4 * i) for i in range(10)]])  # within a pixel
    bad.append([c.good[0].relative_to(c.photos).as_posix(), *GENERIC_POINTS])  # a second row for a file
    for row in bad:
        w.writerow(row)
    text = buf.getvalue() + 'trailing,"unterminated quote\n'
    c.bad_rows = len(bad) + 1
    path = c.root / "landmarks.csv"
    path.write_text(text, encoding="utf-8")
    latin = c.root / "landmarks_latin1.csv"
    latin.write_bytes(
        (
            "file," + ",".join(LM_COLUMNS) + "\nJos\xe9.jpg," + ",".join(map(str, GENERIC_POINTS)) + "\n"
        ).encode("latin-1")
    )
    return path, latin


def build_models_and_sets(c: Corpus) -> dict[str, Path]:
    out: dict[str, Path] = {}
    ckpts = c.root / "ckpts"
    ckpts.mkdir()
    good = checkpoint_dict(32)
    torch.save(good, ckpts / "tiny.pt")
    out["model"] = ckpts / "tiny.pt"
    for name, ckpt in hostile_checkpoints(good).items():
        torch.save(ckpt, ckpts / f"{name}.pt")
        c.checkpoints.append(ckpts / f"{name}.pt")
    c.marker = c.root / "PAYLOAD_RAN"
    from hostile_files import _TouchMarker

    torch.save({"format": "faceforge-checkpoint", "meta": _TouchMarker(c.marker)}, ckpts / "payload.pt")
    (ckpts / "empty.pt").write_bytes(b"")
    (ckpts / "text.pt").write_text("not a checkpoint")
    c.checkpoints += [ckpts / "payload.pt", ckpts / "empty.pt", ckpts / "text.pt"]

    bins = c.root / "bins"
    bins.mkdir()
    (bins / "payload.bin").write_bytes(bin_payload(c.marker))
    (bins / "payload4.bin").write_bytes(bin_payload(c.marker, protocol=4))
    (bins / "ndarray_bomb.bin").write_bytes(bin_ndarray_bomb())
    (bins / "bytes8_bomb.bin").write_bytes(bin_bytes8_bomb())
    (bins / "undecodable.bin").write_bytes(
        bin_of([b"x%d" % i for i in range(40)], [i % 2 == 0 for i in range(20)])
    )
    (bins / "truncated.bin").write_bytes(bin_of([b"a", b"b"], [True])[:-5])
    (bins / "not_a_pickle.bin").write_bytes(random_bytes(300, 5))
    c.bin_items += 7
    for name in (
        "payload",
        "payload4",
        "ndarray_bomb",
        "bytes8_bomb",
        "undecodable",
        "truncated",
        "not_a_pickle",
    ):
        out[f"bin_{name}"] = bins / f"{name}.bin"
    return out


def build_results(c: Corpus) -> dict[str, Path]:
    run = c.root / "results" / "hostile"
    run.mkdir(parents=True)
    (run / "ok.png").write_bytes(encode(random_image(16, 16, 3)))
    (run / "fake.png").write_text("text")
    os.symlink("/etc/passwd", run / "link.png")
    plots = {
        "passwd": "/etc/passwd",
        "up": "../../photos/Junk/text_0.jpg",
        "fake": "fake.png",
        "link": "link.png",
        "missing": "nope.png",
        "ok": "ok.png",
        "hard_link": "hard.png",  # a real PNG outside, hard-linked into the folder (class 8)
    }
    outside = c.root / "outside.png"
    outside.write_bytes(encode(random_image(16, 16, 4)))
    os.link(outside, run / "hard.png")
    c.plots += len(plots) - 1
    rec = {"name": "lfw:x", "kind": "lfw", "summary": {"accuracy": 0.5}, "plots": plots}
    (run / "result.json").write_text(json.dumps({"format": "faceforge-eval/1", "benchmarks": {"lfw:x": rec}}))
    bad = c.root / "results" / "not_json"
    bad.mkdir()
    (bad / "result.json").write_text("{ not json")
    listed = c.root / "results" / "list"
    listed.mkdir()
    (listed / "result.json").write_text("[1, 2, 3]")
    c.plots += 2
    return {"hostile": run / "result.json", "not_json": bad / "result.json", "list": listed / "result.json"}


# ------------------------------------------------------------------------------------------------ steps


def _count_inputs(folder: Path) -> int:
    """Entries below ``folder`` with an image extension that are not folders (links, FIFOs included)."""
    return sum(1 for p in folder.rglob("*") if not p.is_dir() and p.suffix.lower() in COUNTED_EXTENSIONS)


def _written(out: Path, rel: str, renamed: set[str]) -> bool:
    """Whether prepare/align wrote the face of input ``rel`` (under its own name or, on a clash, renamed)."""
    return (out / rel).with_suffix(".jpg").is_file() or rel in renamed


def _no_traceback(res: dict) -> None:
    for key in ("stdout", "stderr", "escaped"):
        assert "Traceback" not in (res.get(key) or ""), (res["name"], key, res.get(key))


def _one_line_naming(*words: str) -> Callable[[Corpus, dict], None]:
    def check(c: Corpus, res: dict) -> None:
        lines = [ln for ln in res["stderr"].splitlines() if ln.strip()]
        assert len(lines) == 1, (res["name"], res["stderr"])
        for w in words:
            assert w in lines[0], (res["name"], w, lines[0])

    return check


def _accounted(report: dict, lists: tuple[str, ...], done: tuple[str, ...]) -> tuple[dict[str, str], int]:
    """``{file: the report list it is in}`` (each file once, each entry with a reason) and the number of
    inputs the report counts as done (``done`` keys)."""
    where: dict[str, str] = {}
    for key in lists:
        for e in report[key]:
            name = e["file"] if isinstance(e, dict) else e
            assert name not in where, (name, key, where.get(name))
            if isinstance(e, dict):
                assert e.get("reason"), (key, e)
            where[name] = key
    return where, sum(report[k] for k in done)


def prepare_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    out = c.root / "prepared"

    def check(c: Corpus, res: dict) -> None:
        report = json.loads((out / "prepare_report.json").read_text())
        lists = ("no_face", "unreadable", "too_small", "bad_landmarks", "name_taken")
        where, n_done = _accounted(report, lists, ("aligned_images", "kept_existing"))
        assert n_done + len(where) == _count_inputs(c.photos), "an input was dropped without a word"
        assert report["images"] == _count_inputs(c.photos)
        for rel, kind in c.hostile.items():
            if kind == "unreadable":
                assert where.get(rel) == "unreadable", (rel, where.get(rel))
            elif kind == "too_small":
                assert where.get(rel) == "too_small", (rel, where.get(rel))
            elif kind == "skipped":
                assert rel in where, rel
        renamed = {r["file"] for r in report["renamed"]}
        # every real photo (odd names, collisions, inside a folder named x.jpg) and every odd-but-valid
        # encoding of a real face (CMYK, 16-bit, grey, GIF, ...) is found as a face and written
        for p in c.good + c.odd_valid:
            rel = p.relative_to(c.photos).as_posix()
            assert rel not in where, (rel, where.get(rel))
            assert _written(out, rel, renamed), rel
        assert {f"Collide/same{e}" for e in (".jpg", ".png", ".jpeg", ".bmp")} <= renamed
        faces = sorted((out / "Collide").iterdir())
        assert len(faces) == 4 and all(f.suffix == ".jpg" for f in faces)
        assert "unreadable: Junk/bad\\nname.jpg (not a decodable image" in res["stdout"]  # one line per item
        assert "unreadable: Junk/empty.jpg (empty file (0 bytes))" in res["stdout"]

    argv = ["prepare", "--images", str(c.photos), "--out", str(out), "--no-progress"]
    argv += ["--detector-model", str(paths["yunet"])]
    # one run over the corpus (its detections are the slowest step); a rerun resuming with renamed and
    # non-UTF-8 names is tests/hostile/test_hostile_images.py's, on five photos
    return [Step("prepare", argv, 0, check)]


def align_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    out = c.root / "aligned"

    def check(c: Corpus, res: dict) -> None:
        report = json.loads((out / "align_report.json").read_text())
        lists = ("no_landmarks", "unreadable", "bad_landmarks", "name_taken")
        where, n_done = _accounted(report, lists, ("aligned", "kept_existing"))
        assert n_done + len(where) == _count_inputs(c.photos)
        for rel, kind in c.hostile.items():
            if kind == "unreadable":
                assert where.get(rel) == "unreadable", (rel, where.get(rel))
        for p in c.good:
            rel = p.relative_to(c.photos).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                assert where.get(rel) == "no_landmarks"
                continue
            assert rel not in where, (rel, where.get(rel))
        rows = report["bad_rows"]
        assert len(rows) == c.bad_rows and all(r["reason"] and ":" in r["row"] for r in rows)
        assert all(str(paths["landmarks"]) in r["row"] for r in rows)

    argv = ["align", "--images", str(c.photos), "--landmarks", str(paths["landmarks"]), "--out", str(out)]
    argv += ["--landmark-offset=-48,-48", "--no-progress"]
    bad_csv = ["align", "--images", str(c.photos), "--landmarks", str(paths["latin1"]), "--out", str(out)]
    return [
        Step("align", argv, 0, check),
        Step("align non-UTF-8 landmarks", bad_csv, 2, _one_line_naming(str(paths["latin1"]), "UTF-8")),
    ]


def build_faces(c: Corpus, data_dir: Path) -> Path:
    """The real LFW photos aligned with the shipped landmarks (library call, not the CLI step)."""
    from faceforge.data.align_folder import align_folder

    lfw = _lfw_photos(data_dir)
    src = data_dir / "lfw" / "images"
    out = c.root / "faces_src"
    align_folder(src, data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", out, landmark_offset=(-48, -48),
                 images=lfw, progress=False)  # fmt: skip
    return out


def _copy_faces(c: Corpus, dst: Path, junk: bool) -> None:
    """The aligned real faces (+ small regular hostile files if ``junk``, in ``dst/Junk``) into ``dst``."""
    shutil.copytree(c.root / "faces_src", dst, ignore=shutil.ignore_patterns("*.json"))
    if junk:
        for rel, kind in sorted(c.hostile.items()):
            src = c.photos / rel
            small_file = src.is_file() and not src.is_symlink() and src.stat().st_size < 1 << 20
            if kind in ("unreadable", "truncated", "too_small") and small_file:
                (dst / "Junk").mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst / "Junk" / Path(rel).name)


def embed_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    faces = c.root / "embed_in"
    out = c.root / "embeddings.npz"

    def check(c: Corpus, res: dict) -> None:
        z = np.load(out if out.is_file() else Path(str(out) + ".npz"), allow_pickle=False)
        names = {Path(n).as_posix() for n in z["names"].tolist()}
        src = c.root / "faces_src"
        good = {f.relative_to(src).as_posix() for f in src.rglob("*.jpg")}
        assert len(good) == N_PEOPLE * PER_PERSON
        assert good <= names and all(n.split("/")[0] != "Junk" for n in names)
        skipped = json.loads(str(z["meta"]))["skipped"]
        junk = sorted((faces / "Junk").iterdir())
        for f in junk:
            assert any(str(f) in s and len(s) > len(str(f)) + 2 for s in skipped), f
        assert np.isfinite(z["embeddings"]).all() and len(z["embeddings"]) == len(names)

    _copy_faces(c, faces, junk=True)
    argv = ["embed", "--model", str(paths["model"]), "--images", str(faces), "--out", str(out)]
    return [Step("embed", argv, 0, check)]


def eval_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    faces = c.root / "eval_faces"
    folder = c.root / "eval_folder"
    people = sorted({p.parent.name for p in c.good[: N_PEOPLE * PER_PERSON]})
    pairs = c.root / "pairs.txt"
    lines = [str(N_PEOPLE)] + [f"{p}\t1\t2" for p in people]
    lines += [f"{a}\t3\t{b}\t3" for a, b in zip(people, people[1:] + people[:1], strict=True)]
    pairs.write_text("\n".join(lines) + "\n")
    mixed_bin = c.root / "bins" / "mixed.bin"
    out = c.root / "eval_out"

    _copy_faces(c, faces, junk=False)
    _copy_faces(c, folder, junk=False)
    broken = faces / people[0] / f"{people[0]}_0001.jpg"  # breaks 1 of the 24 pairs
    broken.write_bytes(ppm_bomb())
    for k, name in enumerate(("empty.jpg", "text.jpg", "bomb.png")):
        (folder / people[k] / name).write_bytes([b"", b"text", ppm_bomb()][k])
    imgs = [f.read_bytes() for f in sorted(faces.rglob("*.jpg")) if f != broken][:32]
    imgs[5], imgs[10] = b"", png_header_only(20000, 20000)
    mixed_bin.write_bytes(bin_of(imgs, [k % 2 == 0 for k in range(16)]))

    def check(c: Corpus, res: dict) -> None:
        result = json.loads((out / "result.json").read_text())
        assert result["settings"]["min_valid_fraction"] == 0.6
        recs = result["benchmarks"]
        assert recs["lfw:pairs"]["validity"]["left_out"] == 1 and recs["lfw:pairs"]["validity"]["total"] == 24
        assert recs["bin:mixed"]["validity"]["left_out"] == 2
        assert recs["allpairs:eval_folder"]["validity"]["left_out"] == 3
        assert res["stdout"].count("left out") == 3
        for rec in recs.values():
            assert rec["settings"]["min_valid_fraction"] == 0.6

    model = ["--model", str(paths["model"])]
    common = ["--no-progress", "--no-cache"]
    steps = [
        Step(
            "eval mixed",
            [
                *("eval", *model, "--benchmark", f"lfw:{pairs}:{faces}", "--benchmark", f"bin:{mixed_bin}"),
                *("--benchmark", f"allpairs:{folder}", "--min-valid", "0.6", "--folds", "2", "--html"),
                *("--out-dir", str(out), *common),
            ],
            0,
            check,
        ),
    ]
    for key, words in {
        "bin_payload": ("refusing to load global",),
        "bin_payload4": ("refusing to load global",),
        "bin_ndarray_bomb": (),
        "bin_bytes8_bomb": (),
        "bin_undecodable": ("none of its 20 pairs",),
        "bin_truncated": (),
        "bin_not_a_pickle": (),
    }.items():
        argv = ["eval", *model, "--benchmark", f"bin:{paths[key]}", *common]
        steps.append(Step(f"eval {key}", argv, 2, _one_line_naming(str(paths[key]), *words)))
    for ckpt in c.checkpoints:
        argv = ["eval", "--model", str(ckpt), "--benchmark", f"bin:{mixed_bin}", *common]
        steps.append(Step(f"eval model {ckpt.name}", argv, 2, _one_line_naming(str(ckpt))))

    page = c.root / "compare.html"

    def compare_check(c: Corpus, res: dict) -> None:
        text = page.read_text()
        assert text.count("data:image/") == 1 and "root:" not in text
        assert "6 plot(s) not embedded" in res["stdout"]

    steps.append(
        Step(
            "eval --compare hostile",
            ["eval", "--compare", str(paths["res_hostile"]), "--html", str(page)],
            0,
            compare_check,
        )
    )
    for key in ("res_not_json", "res_list"):
        argv = ["eval", "--compare", str(paths[key]), "--html", str(c.root / "x.html")]
        steps.append(Step(f"eval --compare {key}", argv, 2, _one_line_naming(str(paths[key]))))
    return steps


def train_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    """Training skips and lists every bad face of a mostly good folder, stops on a folder of junk, and refuses
    hostile configs and checkpoints in one line."""
    some = c.root / "train_some_junk"
    _copy_faces(c, some, junk=False)
    people = sorted(p for p in some.iterdir() if p.is_dir())
    junk = {
        "trunc.jpg": truncated(encode(random_image(112, 112, 1), ".jpg"), 0.4),
        "empty.jpg": b"",
        "random.png": random_bytes(500, 3),
        "tiny.png": encode(random_image(1, 1, 2)),
        "wrong_size.png": encode(random_image(160, 160, 4)),
        "bomb.png": png_header_only(20000, 20000),
        "text.jpg": b"not an image",
        "ppm.jpg": ppm_bomb(),
    }
    planted = []
    for k, (name, data) in enumerate(junk.items()):
        dst = people[k % len(people)] / name
        dst.write_bytes(data)
        planted.append(dst)
    heavy = c.root / "train_mostly_junk"
    _copy_faces(c, heavy, junk=True)
    run = c.root / "train_run"
    yaml_bomb = c.root / "bad.yaml"
    yaml_bomb.write_text(f"run: !!python/object/apply:os.system ['touch {c.marker}']\n")
    common = ["data.exclude_pairs=[]", "data.preload=true", "data.num_workers=0", "data.batch_size=8",
              "model.embedding_size=16", "optim.epochs=1", "run.max_steps=2", "eval.pairs=null", "run.progress=false",
              "run.precision=fp32", "run.threads=1"]  # fmt: skip
    train = ["train", "lfw_mobilefacenet_arcface", *common]

    def check(c: Corpus, res: dict) -> None:
        report = json.loads((run / "report.json").read_text())
        listed = report["skipped_images"]["files"]
        assert report["skipped_images"]["count"] == len(planted) == len(listed)
        for f in planted:
            (entry,) = [e for e in listed if e.startswith(f"{f}: ")]
            assert len(entry) > len(str(f)) + 4, entry  # a reason follows the name
        assert report["num_images"] == N_PEOPLE * PER_PERSON + len(planted)
        assert report["progress"]["global_step"] == 2

    steps = [Step("train with some bad faces", [*train, f"data.root={some}", f"run.dir={run}"], 0, check)]
    steps.append(
        Step(
            "train on a folder of junk",
            [*train, f"data.root={heavy}", f"run.dir={c.root / 'heavy_run'}"],
            2,
            _one_line_naming("could not be used", "data.max_skipped"),
        )
    )
    steps.append(Step("train from a python-tag YAML", ["train", str(yaml_bomb)], 2,
                      _one_line_naming(str(yaml_bomb.stem), "not plain YAML")))  # fmt: skip
    steps.append(Step("train with batch size 0", [*train, f"data.root={some}", "data.batch_size=0"], 2,
                      _one_line_naming("data.batch_size=0 must be an integer")))  # fmt: skip
    for ckpt in c.checkpoints[:4] + [p for p in c.checkpoints if p.name == "payload.pt"]:
        argv = [*train, f"data.root={some}", f"run.dir={c.root / 'init_run'}", f"run.init={ckpt}"]
        steps.append(Step(f"train from {ckpt.name}", argv, 2, _one_line_naming(str(ckpt))))
    return steps


def quality_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    """Class 3 (a name that is not UTF-8 does not end the job), 6 (sharpness of an 88-megapixel PNG the pixel
    limit allows, in bounded memory) and the whole corpus through ``quality --measure sharpness``."""
    out = c.root / "quality" / "scores.csv"
    big = c.root / "big"
    big.mkdir()
    # 88.2 megapixels in ~300 kB, under the pixel limit: the one image of the corpus that is decoded at full
    # size (class 6), by this step only; written without building it in memory
    (big / "stripes_88mp.png").write_bytes(png_stripes(9000, 9800, period=50))
    c.options += 1

    def check(c: Corpus, res: dict) -> None:
        report = json.loads(out.with_name("scores_report.json").read_text())
        listed = {s.split(": ", 1)[0]: s.split(": ", 1)[1] for s in report["skipped"]}
        assert all(listed.values())
        assert report["n_scored"] + len(report["skipped"]) == _count_inputs(c.photos)
        for rel, kind in c.hostile.items():
            if kind in ("unreadable", "truncated"):
                assert printable(c.photos / rel) in listed, rel
        with out.open(newline="", encoding="utf-8") as fh:
            scored = {r["path"] for r in csv.DictReader(fh)}
        for p in c.good + c.odd_valid:
            rel = p.relative_to(c.photos).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:  # listed under an escaped name, with the reason
                assert "not UTF-8" in listed[printable(p)] and "\\udce9" in printable(p), listed
                continue
            assert rel in scored, rel

    def big_check(c: Corpus, res: dict) -> None:
        assert "wrote 1 quality scores" in res["stdout"], res["stdout"]

    argv = [
        "quality",
        "--measure",
        "sharpness",
        "--images",
        str(c.photos),
        "--out",
        str(out),
        "--no-progress",
    ]
    big_argv = ["quality", "--measure", "sharpness", "--images", str(big), "--out", str(c.root / "big.csv")]
    return [
        Step("quality sharpness", argv, 0, check),
        Step("quality 88-megapixel PNG", big_argv, 0, big_check),
    ]


def search_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    """Class 3: one 1x1 photo, a FIFO or a symbolic-link loop among the probes or the gallery is skipped and
    named; every good probe is searched."""
    gallery, probes = c.root / "search_gallery", c.root / "search_probes"
    people = sorted({p.parent.name for p in c.good[: N_PEOPLE * PER_PERSON]})[:3]
    probes.mkdir()
    for person in people:
        (gallery / person).mkdir(parents=True)
        for k in (0, 1):
            shutil.copy(c.photos / person / sorted(os.listdir(c.photos / person))[k], gallery / person)
        shutil.copy(c.photos / person / sorted(os.listdir(c.photos / person))[2], probes / f"{person}.jpg")
    bad = {"tiny_1x1.png": encode(random_image(1, 1, 1)), "empty.jpg": b"", "text.png": b"text"}
    for name, data in bad.items():
        (gallery / people[0] / name).write_bytes(data)
        (probes / name).write_bytes(data)
    for folder in (gallery / people[1], probes):
        os.mkfifo(folder / "fifo.jpg")
        os.symlink("loop.jpg", folder / "loop.jpg")
    out = c.root / "search" / "results.csv"

    def check(c: Corpus, res: dict) -> None:
        report = json.loads(out.with_suffix(".json").read_text())
        names = sorted(Path(s["file"]).name for s in report["skipped"] if s["reason"])
        assert names == sorted([*bad, "fifo.jpg", "loop.jpg"] * 2), names
        assert report["probe_photos_searched"] == len(people) and report["gallery_faces"] == 2 * len(people)
        for name in (*bad, "fifo.jpg", "loop.jpg"):
            assert name in res["stdout"], name

    argv = ["search", "--gallery", str(gallery), "--probes", str(probes), "--out", str(out)]
    return [Step("search with bad photos", argv, 0, check)]


def option_steps(c: Corpus, paths: dict[str, Path]) -> list[Step]:
    """Classes 1, 2, 5 and 7: every option value, override and config file issue 30 names (and more of each
    kind) is refused with exit 2 in one line naming the option and its value, fast, before any work; NaN
    models are refused naming the model."""
    faces = c.root / "faces_src"
    model, nan_model = str(paths["model"]), str(paths["nan_model"])
    embed = ["embed", "--model", model, "--images", str(faces), "--out", str(c.root / "o.npz")]
    prep = ["prepare", "--images", str(c.root / "faces_src"), "--out", str(c.root / "o_prep")]
    align = [
        "align",
        "--images",
        str(faces),
        "--landmarks",
        str(paths["landmarks"]),
        "--out",
        str(c.root / "o_al"),
    ]
    search = ["search", "--gallery", str(faces), "--probes", str(faces), "--out", str(c.root / "o.csv")]
    export = ["export-onnx", model, str(c.root / "o.onnx")]
    ev = ["eval", "--model", model, "--benchmark", f"allpairs:{faces}", "--no-progress", "--no-cache"]
    train = ["train", "lfw_mobilefacenet_arcface", f"data.root={faces}", f"run.dir={c.root / 'o_run'}"]
    cases: list[tuple[list[str], tuple[str, ...]]] = []
    for v in ("-4", "0", "nan", "1e9", "abc", "2.5"):
        cases.append(([*embed, "--batch-size", v], ("--batch-size", v)))
        cases.append(([*ev, "--batch-size", v], ("--batch-size", v)))
    for v in ("cuda:99", "gpu", "cuda:-1", "tpu:0"):
        cases.append(([*embed, "--device", v], ("device", v)))
    cases.append(([*embed, "--model-option", "junk=1"], ("junk",)))
    cases.append(([*embed, "--model-option", "batch_size=abc"], ("batch_size",)))
    for v in ("-112", "0", "5", "99999", "nan"):
        cases.append(([*prep, "--size", v], ("--size", v)))
        cases.append(([*align, "--size", v], ("--size", v)))
    for v in ("nan,inf", "inf,0", "1", "1,2,3", "a,b"):
        cases.append(([*align, f"--landmark-offset={v}"], ("--landmark-offset", v)))
    for v in ("-1", "0", "99", "nan"):
        cases.append(([*export, "--opset", v], ("--opset", v)))
    for v in ("nan", "inf", "-1", "0", "2"):
        cases.append(([*export, "--tolerance", v], ("--tolerance", v)))
    for v in ("nan", "inf", "2", "-1.5"):
        cases.append(([*search, "--threshold", v], ("--threshold", v)))
    for v in ("0", "-1", "1.5", "nan"):
        cases.append(([*search, "--k", v], ("--k", v)))
    for v in ("5", "0", "1", "nan", "-0.1"):
        cases.append(([*search, "--fmr", v], ("--fmr", v)))
    for v in ("-2", "nan", "1.5"):
        cases.append(([*ev, "--min-valid", v], ("--min-valid", v)))
    for key, v in (("run.seed", "-1"), ("optim.weight_decay", "-1"), ("optim.grad_clip", "-0.5"),
                   ("optim.warmup_epochs", "-1"), ("run.threads", "-2"), ("data.batch_size", "0"),
                   ("optim.lr", "nan"), ("optim.lr", "inf"), ("optim.momentum", "1.5"), ("data.num_workers", "-1"),
                   ("optim.accumulate_steps", "0"), ("data.max_skipped", "2")):  # fmt: skip
        cases.append(([*train, f"{key}={v}"], (key,)))
    cases.append(
        ([*train, "run.name=!!python/object/apply:os.system ['true']"], ("run.name", "not plain YAML"))
    )
    cases.append(([*train, "run.name=!!binary aGk="], ("run.name",)))
    # config files: an alias bomb (class 2), not UTF-8, a python tag, deeply nested, binary
    configs = c.root / "configs"
    configs.mkdir()
    level = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    bomb = f"a0: &a0 {level}\n" + "".join(
        f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
    )
    files = {
        "bomb.yaml": (bomb.encode(), "alias"),
        "latin1.yaml": ("run:\n  name: Jos\xe9\n".encode("latin-1"), "UTF-8"),
        "tag.yaml": (b"run: !!python/object/apply:os.system ['true']\n", "not plain YAML"),
        "deep.yaml": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "deep"),
        "binary.yaml": (bytes(range(256)) * 8, "UTF-8"),
    }
    for name, (data, word) in files.items():
        (configs / name).write_bytes(data)
        cases.append((["train", str(configs / name)], (name, word)))
    # text inputs: a pairs file of binary bytes, non-JSON or deeply nested result files (class 1)
    (configs / "pairs.txt").write_bytes(bytes(range(256)) * 4)
    cases.append((["eval", "--model", model, "--pairs", str(configs / "pairs.txt"), "--images", str(faces)],
                  ("pairs.txt", "UTF-8")))  # fmt: skip
    for name, data in (("deep.json", b"[" * 100000 + b"]" * 100000), ("bin.json", bytes(range(256)))):
        (configs / name).write_bytes(data)
        cases.append((["eval", "--compare", str(configs / name), "--html", str(c.root / "o.html")], (name,)))
    # NaN models are refused naming the model (classes 4, 5 and 7), never "0 embeddings" or "re-align"
    nan_cases = [
        ["embed", "--model", nan_model, "--images", str(faces), "--out", str(c.root / "o_nan.npz")],
        ["eval", "--model", nan_model, "--benchmark", f"allpairs:{faces}", "--no-progress", "--no-cache"],
    ]
    c.options += len(cases) + len(nan_cases)
    steps = [
        Step(f"option {' '.join(argv[-2:])[-60:]}", argv, 2, _one_line_naming(*words))
        for argv, words in cases
    ]
    for argv in nan_cases:
        steps.append(Step(f"NaN model {argv[0]}", argv, 2, _nan_refused(nan_model)))
    return steps


def _nan_refused(model: str) -> Callable[[Corpus, dict], None]:
    def check(c: Corpus, res: dict) -> None:
        line = [ln for ln in res["stderr"].splitlines() if "error" in ln][-1]
        assert model in line and "NaN" in line and "re-align" not in line, line

    return check


#: command -> steps
COMMAND_STEPS: dict[str, Callable[[Corpus, dict[str, Path]], list[Step]]] = {
    "prepare": prepare_steps,
    "align": align_steps,
    "embed": embed_steps,
    "eval": eval_steps,
    "train": train_steps,
    "quality": quality_steps,
    "search": search_steps,
    "options": option_steps,
}


# ------------------------------------------------------------------------------------------------ driver

DRIVER = """
import contextlib, io, json, resource, signal, sys, time, traceback
cap = int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
limit = int(sys.argv[4])
class Hang(BaseException):
    pass
def alarm(signum, frame):
    raise Hang(f"still running after {limit} s")
signal.signal(signal.SIGALRM, alarm)
from faceforge.cli.main import main
results = []
for step in json.loads(open(sys.argv[1]).read()):
    out, err = io.StringIO(), io.StringIO()
    escaped, hang = "", False
    t0 = time.perf_counter()
    signal.alarm(limit)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(step["argv"])
        except SystemExit as exc:  # argparse's refusal: the exit status a shell would see
            rc = exc.code
        except Hang:
            rc, hang = None, True
        except BaseException:
            rc, escaped = None, traceback.format_exc()
    signal.alarm(0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.append({"name": step["name"], "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "escaped": escaped, "hang": hang, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak})
    open(sys.argv[2], "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def fuzz_run(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Corpus, list[Step], list[dict], str]:
    yunet = data_dir / "models" / "face_detection_yunet_2026may.onnx"
    if not yunet.is_file():
        pytest.skip(f"YuNet model not found at {yunet}")
    root = tmp_path_factory.mktemp("fuzz")
    corpus = build_corpus(root, data_dir)
    build_faces(corpus, data_dir)
    landmarks, latin1 = build_landmarks(corpus, data_dir)
    paths = {"yunet": yunet, "landmarks": landmarks, "latin1": latin1}
    paths |= build_models_and_sets(corpus)
    nan = checkpoint_dict(32)
    nan["backbone"] = {
        k: v * float("nan") if v.is_floating_point() else v for k, v in nan["backbone"].items()
    }
    torch.save(nan, corpus.root / "ckpts" / "nan_weights.pt")
    paths["nan_model"] = corpus.root / "ckpts" / "nan_weights.pt"
    paths |= {f"res_{k}": v for k, v in build_results(corpus).items()}
    steps = [s for build in COMMAND_STEPS.values() for s in build(corpus, paths)]
    (root / "steps.json").write_text(json.dumps([{"name": s.name, "argv": s.argv} for s in steps]))
    argv = [sys.executable, "-c", DRIVER, str(root / "steps.json"), str(root / "results.json")]
    proc = subprocess.run(
        [*argv, str(ADDRESS_SPACE_CAP_GB), str(STEP_LIMIT_S)],
        capture_output=True,
        # one intra-op thread: the contracts checked here do not depend on it, and on a shared 2-core runner
        # OpenMP's spinning barriers stalled every forward while another process held a core (the child
        # took 70 s instead of 48 s); prepare still spreads the photos over worker processes
        env=child_env() | {"FACEFORGE_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"},
        timeout=900,
        check=False,
    )
    native_stderr = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 0, native_stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return corpus, steps, results, native_stderr


def test_corpus_has_every_class_and_500_inputs(fuzz_run) -> None:
    corpus, steps, _, _ = fuzz_run
    kinds = set(corpus.hostile.values())
    assert {"truncated", "unreadable", "too_small", "skipped", "odd_valid", "name", "collision"} <= kinds
    assert {s.name.split()[0] for s in steps} >= {
        "prepare",
        "align",
        "embed",
        "eval",
        "train",
        "quality",
        "search",
    }
    assert corpus.n_hostile >= 500, corpus.n_hostile
    assert len(corpus.good) >= 36


def test_every_command_keeps_its_contract(fuzz_run) -> None:
    corpus, steps, results, native_stderr = fuzz_run
    assert [r["name"] for r in results] == [s.name for s in steps]
    assert "Traceback" not in native_stderr
    for step, res in zip(steps, results, strict=True):
        _no_traceback(res)
        assert not res["hang"] and res["seconds"] < STEP_LIMIT_S, (step.name, res["seconds"])
        assert res["rc"] == step.rc, (step.name, res["rc"], res["stderr"][-500:])
        if step.check is not None:
            step.check(corpus, res)
    assert corpus.marker is not None and not corpus.marker.exists(), "a pickle payload ran"
    peak = max(r["peak_rss_mb"] for r in results)
    top = sorted(((r["peak_rss_mb"], r["name"]) for r in results), reverse=True)[:5]
    assert peak < PEAK_RSS_LIMIT_MB, top  # the steps with the highest peaks, named
