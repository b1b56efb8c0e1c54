"""data.format: folder / rec / tfr_index datasets built from config give the same items, and train."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from faceforge.config import ConfigError, compose_config
from faceforge.data.build import build_dataset, effective_format
from faceforge.data.dataset import FaceDataset, WrongImageSizeError, collate_faces
from faceforge.data.index_files import write_index_file, write_tfrecord_shard
from faceforge.data.recordio import write_face_rec
from faceforge.data.samples import Samples, scan_image_folder
from faceforge.data.transforms import Compose

CONFIG = "lfw_mobilefacenet_arcface"


def data_cfg(root: Path, *overrides: str):
    base = [f"data.root={root}", "data.exclude_pairs=[]", "data.num_workers=0", "eval.pairs=null"]
    return compose_config(CONFIG, [*base, *overrides]).data


@pytest.fixture(scope="module")
def lfw_rec(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("lfw_rec") / "train"
    write_face_rec(scan_image_folder(lfw_small), prefix)
    return prefix


def test_rec_config_trains_two_steps(lfw_small: Path, lfw_rec: Path, tmp_path: Path) -> None:
    from faceforge.engine.loop import Trainer

    cfg = compose_config(
        CONFIG,
        [
            "data.format=rec",
            f"data.rec={lfw_rec}",
            f"data.root={lfw_small}",
            "data.exclude_pairs=[]",
            "data.preload=false",
            "model.embedding_size=64",
            "run.progress=false",
            "run.precision=fp32",
            "run.threads=2",
            "eval.pairs=null",
            "data.batch_size=8",
            "run.max_steps=2",
            "run.log_every=1",
            f"run.dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    folder = scan_image_folder(lfw_small, min_images_per_identity=cfg.data.min_images_per_identity)
    assert trainer.data.num_classes == folder.num_classes
    assert len(trainer.data.labels) == len(folder)
    assert trainer.objectives["margin"].head.weight.shape[0] == folder.num_classes
    report = trainer.fit()
    losses = [h["margin"] for h in report["history"]]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert report["progress"]["global_step"] == 2
    assert report["num_identities"] == folder.num_classes
    assert report["skipped_images"]["count"] == 0


@pytest.mark.parametrize("preload", [False, True])
def test_rec_items_match_folder_items(lfw_small: Path, lfw_rec: Path, preload: bool) -> None:
    common = [f"data.preload={str(preload).lower()}", "data.augment={flip: {p: 0.5}, colour_jitter: {}}"]
    folder = build_dataset(data_cfg(lfw_small, *common), seed=3, progress=False)
    rec = build_dataset(
        data_cfg(lfw_small, "data.format=rec", f"data.rec={lfw_rec}.rec", *common), seed=3, progress=False
    )
    assert isinstance(rec.dataset, FaceDataset) and rec.dataset.read is not rec.dataset._read_file
    assert (rec.num_classes, rec.num_samples) == (folder.num_classes, folder.num_samples)
    assert rec.samples.paths[0] == f"{lfw_rec}.rec:1"
    n = len(folder.dataset)
    for epoch in (0, 1):
        folder.dataset.set_epoch(epoch)
        rec.dataset.set_epoch(epoch)
        for i in (0, 1, n // 2, n - 1):
            a, b = folder.dataset[i], rec.dataset[i]
            assert a[1:] == b[1:]
            assert a[0].dtype == b[0].dtype == np.uint8 and a[0].shape == (112, 112, 3)
            assert a[0].tobytes() == b[0].tobytes()
    # no augmentation: the decoded pixels themselves are identical
    plain = build_dataset(data_cfg(lfw_small, "data.format=rec", f"data.rec={lfw_rec}"), augment=Compose([]))
    folder.dataset.augment = Compose([])
    assert plain.dataset[5][0].tobytes() == folder.dataset[5][0].tobytes()


def _small_set_with_corrupt_file(lfw_small: Path, tmp: Path) -> Samples:
    src = scan_image_folder(lfw_small)
    paths = [src.paths[i] for i in range(0, 40, 5)]
    labels = [int(src.labels[i]) for i in range(0, 40, 5)]
    folder = tmp / "imgs"
    folder.mkdir()
    copied = []
    for i, p in enumerate(paths):
        copied.append(str(folder / f"{i}.jpg"))
        shutil.copyfile(p, copied[-1])
    Path(copied[3]).write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 60)  # JPEG magic, no image
    return Samples(copied, np.asarray(labels), [str(c) for c in range(max(labels) + 1)])


@pytest.mark.parametrize("preload", [False, True])
def test_corrupt_record_is_skipped_and_counted_like_a_corrupt_file(
    lfw_small: Path, tmp_path: Path, preload: bool
) -> None:
    from faceforge.data.dataset import FaceDataset
    from faceforge.data.recordio import read_idx

    samples = _small_set_with_corrupt_file(lfw_small, tmp_path)
    rec_path, idx_path = write_face_rec(samples, tmp_path / "bad")
    # damage the stored JPEG of another record (past the 8-byte frame and the 24-byte IRHeader)
    offset = read_idx(idx_path)[7]
    with open(rec_path, "r+b") as f:
        f.seek(offset + 8 + 24)
        f.write(b"\0" * 64)
    cfg = data_cfg(tmp_path, "data.format=rec", "data.rec=bad", f"data.preload={str(preload).lower()}")
    rec = build_dataset(cfg, progress=False, augment=Compose([]))
    folder = FaceDataset(samples, preload=preload, progress=False)
    items = [rec.dataset[i] for i in range(len(rec.dataset))]
    bad = [it for it in items if it[0] is None]
    assert [it[2] for it in bad] == [3, 6]
    if not preload:
        assert bad[0][1].startswith(f"{rec_path}:4: ") and "decodable" in bad[0][1]
        assert bad[1][1].startswith(f"{rec_path}:7: ") and "decodable" in bad[1][1]
    else:
        assert len(rec.dataset.preload_skipped) == 2 and rec.dataset.preload_skipped[0].startswith(
            f"{rec_path}:4: "
        )
        assert len(folder.preload_skipped) == 1
    batch = collate_faces(items)
    folder_batch = collate_faces([folder[i] for i in range(len(folder))])
    assert len(batch.skipped) == 2 and len(folder_batch.skipped) == 1
    assert len(batch) == len(samples) - 2
    # every image that is not broken in the record is the folder's image
    good = [i for i in range(len(samples)) if i not in (3, 6)]
    same = np.isin(folder_batch.indices.numpy(), good)
    assert batch.images.numpy().tobytes() == folder_batch.images[same].numpy().tobytes()
    assert batch.indices.tolist() == good


def test_wrong_size_record_is_skipped_like_a_wrong_size_file(tmp_path: Path) -> None:
    import cv2

    img = np.full((100, 90, 3), 128, np.uint8)
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), img)
    write_face_rec(Samples([str(path)], np.asarray([0]), ["0"]), tmp_path / "odd")
    cfg = data_cfg(tmp_path, "data.format=rec", "data.rec=odd", "data.min_images_per_identity=1")
    pre = build_dataset(cfg, augment=Compose([]))  # preload (the config's default) checks every image
    assert pre.dataset.preload_skipped == [
        f"{tmp_path / 'odd.rec'}:1: is 90x100, expected an aligned 112x112 face: "
        "align the folder first with 'faceforge align' (or set data.image_size)"
    ]
    rec = build_dataset(OmegaConf.merge(cfg, {"preload": False}), augment=Compose([]))
    assert rec.dataset[0][0] is None and "odd.rec:1: is 90x100" in rec.dataset[0][1]
    with pytest.raises(WrongImageSizeError, match=r"odd\.rec:1: is 90x100"):
        rec.dataset.image(0)


def test_tfr_index_items_match_folder_items(lfw_small: Path, tmp_path: Path) -> None:
    src = scan_image_folder(lfw_small)
    n = 20
    rows = write_tfrecord_shard(
        tmp_path,
        "lfw",
        0,
        ((Path(p).read_bytes(), int(lab)) for p, lab in zip(src.paths[:n], src.labels[:n], strict=True)),
    )
    write_index_file(tmp_path / "index.txt", rows)
    cfg = data_cfg(tmp_path, "data.format=tfr_index", f"data.index_file={tmp_path / 'index.txt'}")
    tfr = build_dataset(cfg, seed=1, progress=False)
    assert tfr.num_samples == n and tfr.num_classes == len(set(src.labels[:n].tolist()))
    folder = build_dataset(data_cfg(lfw_small), seed=1, progress=False)
    for i in (0, n - 1):
        a, b = folder.dataset[i], tfr.dataset[i]
        assert a[1:] == b[1:] and a[0].tobytes() == b[0].tobytes()
    assert "lfw-00000.tfrecord@" in tfr.samples.paths[0]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.format=rec"], "data.rec"),
        (["data.format=tfr_index"], "data.index_file"),
        (["data.format=list"], "data.list_file"),
        (["data.format=lmdb"], "data.format"),
        (["data.format=rec", "data.rec=x", "data.exclude_pairs=[p.txt]"], "data.exclude_pairs"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], key: str) -> None:
    base = ["data.root=/tmp", "data.exclude_pairs=[]", "eval.pairs=null"]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_config(CONFIG, [*base, *overrides])


def test_folder_with_list_file_reads_the_list(tmp_path: Path) -> None:
    cfg = compose_config(CONFIG, ["data.root=/tmp", "data.list_file=l.txt", "eval.pairs=null"]).data
    assert cfg.format == "folder" and effective_format(cfg) == "list"
    assert effective_format(compose_config(CONFIG, ["data.root=/tmp"]).data) == "folder"


class _PidDataset(torch.utils.data.Dataset):
    """Items of a built dataset with the worker's pid and the pid that opened the record file."""

    def __init__(self, ds: FaceDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        img, label, _, _ = self.ds[i]
        return int(img.sum()), label, os.getpid(), self.ds.read.reader._pid


def test_rec_dataset_reopens_its_file_in_a_forked_worker(lfw_small: Path, lfw_rec: Path) -> None:
    built = build_dataset(
        data_cfg(lfw_small, "data.format=rec", f"data.rec={lfw_rec}", "data.preload=false"),
        augment=Compose([]),
    )
    ds = torch.utils.data.Subset(built.dataset, range(4))
    parent = [ds[i] for i in range(4)]  # opens the file in the parent
    assert built.dataset.read.reader._pid == os.getpid()
    loader = torch.utils.data.DataLoader(
        _PidDataset(built.dataset), batch_size=None, num_workers=1, multiprocessing_context="fork",
        sampler=range(4),
    )  # fmt: skip
    rows = list(loader)
    assert [int(r[0]) for r in rows] == [int(img.sum()) for img, _, _, _ in parent]
    assert [int(r[1]) for r in rows] == [label for _, label, _, _ in parent]
    assert all(int(r[2]) != os.getpid() and int(r[3]) == int(r[2]) for r in rows)


def test_data_formats_registry_serves_config_and_build(lfw_small: Path, monkeypatch) -> None:
    from faceforge.data.build import DATA_FORMATS, DataFormat

    assert DATA_FORMATS.ordered_names() == ["folder", "list", "rec", "tfr_index"]
    assert DATA_FORMATS.build("rec").needs == "rec" and DATA_FORMATS.build("tfr_index").numeric_labels

    def first_two(data):  # a format defined here, outside the package: two identities of the folder
        s = scan_image_folder(data.root)
        keep = s.labels < 2
        return Samples([p for p, k in zip(s.paths, keep, strict=True) if k], s.labels[keep], s.classes[:2])

    fmt = DataFormat("first_two", "two identities", first_two, needs="list_file", needs_what="ignored here")
    monkeypatch.setitem(DATA_FORMATS._items, "first_two", lambda: fmt)
    # config validation reads the registry: the new name is known, and the key it needs is asked for
    with pytest.raises(ConfigError, match=r"data\.format=first_two needs data\.list_file \(ignored here\)"):
        data_cfg(lfw_small, "data.format=first_two")
    cfg = data_cfg(lfw_small, "data.format=first_two", "data.list_file=unused.txt")
    # and so does build_dataset, with the same message for a section that skipped the config check
    with pytest.raises(ValueError, match=r"data\.format=first_two needs data\.list_file"):
        build_dataset(OmegaConf.merge(cfg, {"list_file": None}))
    built = build_dataset(OmegaConf.merge(cfg, {"preload": False}), augment=Compose([]), progress=False)
    assert built.num_classes == 2 and built.num_samples == int(
        (scan_image_folder(lfw_small).labels < 2).sum()
    )
    with pytest.raises(
        ValueError, match=r"data\.format='lmdb' is not one of \['folder', 'list', 'rec', 'tfr_index'"
    ):
        build_dataset(OmegaConf.merge(cfg, {"format": "lmdb"}))
