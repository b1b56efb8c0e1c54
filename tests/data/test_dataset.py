"""Sample lists, dataset, collate, sampler, augmentation and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.data.dataset import FaceDataset, ResumableSampler, WrongImageSizeError, collate_faces
from faceforge.data.image_io import write_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.data.samples import read_list_file, scan_image_folder
from faceforge.data.transforms import RandomHorizontalFlip, build_augmentations


def _face(value: int, size: int = 112) -> np.ndarray:
    img = np.full((size, size, 3), value, dtype=np.uint8)
    img[:, : size // 2, 0] = 255 - value  # left half differs so a flip is visible
    return img


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for person, n in (("alice", 3), ("bob", 1), ("carol", 2)):
        for i in range(n):
            write_image_rgb(tmp_path / person / f"{person}_{i:04d}.png", _face(10 * i + 5))
    (tmp_path / "empty_person").mkdir()
    return tmp_path


def test_scan_image_folder_labels_exclusion_and_empty_folder(tree: Path) -> None:
    s = scan_image_folder(tree)
    assert s.classes == ["alice", "bob", "carol"] and s.num_classes == 3
    assert s.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert any("empty_person" in w and "no images" in w for w in s.warnings)
    s2 = scan_image_folder(tree, exclude_identities={"alice"}, min_images_per_identity=2)
    assert s2.classes == ["carol"] and s2.labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match="no training images"):
        scan_image_folder(tree, exclude_identities={"alice", "bob", "carol"})
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        scan_image_folder(tree / "nope")


def test_list_file(tree: Path, tmp_path: Path) -> None:
    lf = tmp_path / "train.txt"
    lf.write_text("# comment\nalice/alice_0000.png 0\ncarol/carol_0001.png 2\n")
    s = read_list_file(lf)
    assert s.paths[0] == str(tmp_path / "alice/alice_0000.png") and s.labels.tolist() == [0, 2]
    assert s.num_classes == 3 and s.warnings  # label 1 has no images
    (tmp_path / "bad.txt").write_text("alice/alice_0000.png zero\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: label 'zero'"):
        read_list_file(tmp_path / "bad.txt")


def test_dataset_skips_unreadable_and_rejects_unaligned(tree: Path) -> None:
    (tree / "bob" / "bob_0000.png").write_bytes(b"not an image")
    s = scan_image_folder(tree)
    ds = FaceDataset(s, build_augmentations(None))
    batch = collate_faces([ds[i] for i in range(len(ds))])
    assert len(batch) == 5 and batch.images.shape == (5, 112, 112, 3) and batch.images.dtype == torch.uint8
    assert len(batch.skipped) == 1 and "bob_0000.png" in batch.skipped[0]
    pre = FaceDataset(s, preload=True, progress=False)
    assert len(pre.preload_skipped) == 1 and pre[3][0] is None
    assert (
        pre[3][1] == pre.preload_skipped[0] == batch.skipped[0]
    )  # the item carries its reason, preloaded or not
    write_image_rgb(tree / "carol" / "carol_0000.png", _face(5, size=160))
    # a face of another size is skipped and listed with why (a folder that was not aligned stops the trainer)
    image, reason, _, _ = FaceDataset(scan_image_folder(tree))[4]
    assert image is None and "is 160x160, expected an aligned 112x112 face" in reason
    with pytest.raises(WrongImageSizeError, match="align the folder first"):
        FaceDataset(scan_image_folder(tree)).image(4)


def test_augmentation_is_a_function_of_seed_epoch_and_index(tree: Path) -> None:
    s = scan_image_folder(tree)
    ds = FaceDataset(s, build_augmentations({"flip": {"p": 0.5}}), seed=3)
    first = [ds[i][0].copy() for i in range(len(ds))]
    assert all(np.array_equal(a, ds[i][0]) for i, a in enumerate(first))
    flips = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        flips.append(
            [
                not np.array_equal(ds[i][0], scan_img)
                for i, scan_img in enumerate(FaceDataset(s)[j][0] for j in range(len(ds)))
            ]
        )
    frac = np.mean(flips)
    assert 0.2 < frac < 0.8  # p=0.5 flips some but not all
    flip = RandomHorizontalFlip(1.0)
    img = _face(5)
    assert np.array_equal(flip(img, np.random.default_rng(0)), img[:, ::-1])
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)


def test_sampler_shards_resume_and_epochs() -> None:
    full = list(ResumableSampler(10, seed=1))
    assert sorted(full) == list(range(10))
    s = ResumableSampler(10, seed=1)
    s.set_epoch(0, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(1)
    assert list(s) != full
    r0, r1 = (
        ResumableSampler(10, seed=1, rank=0, world_size=2),
        ResumableSampler(10, seed=1, rank=1, world_size=2),
    )
    assert set(r0).isdisjoint(set(r1)) and sorted(list(r0) + list(r1)) == list(range(10))
    odd = [list(ResumableSampler(7, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 4  # padded by wrapping, like DistributedSampler


def test_preprocess_maps_pixels_and_checks_shape() -> None:
    p = Preprocess()
    batch = torch.zeros(2, 112, 112, 3, dtype=torch.uint8)
    batch[..., 0] = 255
    x = p(batch)
    assert x.shape == (2, 3, 112, 112) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[:, 0], torch.ones(1)) and torch.allclose(x[:, 1], -torch.ones(1))
    xb = Preprocess(colour="BGR")(batch)
    assert torch.allclose(xb[:, 2], torch.ones(1))  # red moved to the last channel
    with pytest.raises(ValueError, match="aligned 112x112"):
        p(torch.zeros(1, 160, 160, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        p(torch.zeros(1, 112, 112, 3))
    assert Preprocess.from_dict(p.to_dict()) == p
