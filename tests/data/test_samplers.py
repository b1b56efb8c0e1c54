"""Identity-balanced and multi-branch batch samplers: structure, rank disjointness, resume, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceforge.data.dataset import TaggedRows, collate_faces
from faceforge.data.samplers import (
    Branch,
    IdentityBalancedBatchSampler,
    MultiBranchBatchSampler,
    TaggedBranches,
)


def _labels(num_ids: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, num_ids)  # some identities have fewer than K images
    labels = np.repeat(np.arange(num_ids), counts)
    return labels[rng.permutation(len(labels))]


def test_pk_structure_and_valid_indices() -> None:
    labels = _labels()
    s = IdentityBalancedBatchSampler(labels, p=4, k=3, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 20 // 4
    seen_ids: list[int] = []
    for b in batches:
        assert len(b) == 12
        assert all(0 <= i < len(labels) for i in b)
        groups = np.asarray(labels[b]).reshape(4, 3)
        assert (groups == groups[:, :1]).all()  # identity-major: K images of one identity, then the next
        ids = groups[:, 0].tolist()
        assert len(set(ids)) == 4
        seen_ids += ids
        for row, idx in zip(groups, np.asarray(b).reshape(4, 3), strict=True):
            if (labels == row[0]).sum() >= 3:
                assert len(set(idx.tolist())) == 3  # without replacement when the identity has >= K
    assert len(set(seen_ids)) == len(seen_ids)  # one pass: no identity twice


def test_disjoint_ranks_and_determinism() -> None:
    labels = _labels(40)
    per_rank = [
        list(IdentityBalancedBatchSampler(labels, 4, 2, seed=3, rank=r, world_size=3)) for r in range(3)
    ]
    assert all(len(p) == 40 // 12 for p in per_rank)
    for step in range(len(per_rank[0])):
        id_sets = [set(labels[per_rank[r][step]].tolist()) for r in range(3)]
        assert not (id_sets[0] & id_sets[1] or id_sets[0] & id_sets[2] or id_sets[1] & id_sets[2])
    again = list(IdentityBalancedBatchSampler(labels, 4, 2, seed=3, rank=1, world_size=3))
    assert again == per_rank[1]
    other_epoch = IdentityBalancedBatchSampler(labels, 4, 2, seed=3, rank=1, world_size=3)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != per_rank[1]
    with pytest.raises(ValueError, match="rank"):
        IdentityBalancedBatchSampler(labels, 4, 2, rank=3, world_size=3)
    with pytest.raises(ValueError, match="cannot fill"):
        IdentityBalancedBatchSampler(labels, 30, 2, world_size=2)


def test_resume_continues_the_epoch() -> None:
    labels = _labels(30)
    s = IdentityBalancedBatchSampler(labels, 3, 4, seed=5, batches_per_epoch=17)  # > one pass: cycles
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 17
    s2 = IdentityBalancedBatchSampler(labels, 3, 4, seed=5, batches_per_epoch=17)
    s2.set_epoch(2, start_batch=6)
    assert len(s2) == 11 and list(s2) == full[6:]


def test_works_as_dataloader_batch_sampler() -> None:
    labels = _labels()
    ds = torch.utils.data.TensorDataset(torch.arange(len(labels)))
    s = IdentityBalancedBatchSampler(labels, 2, 2)
    out = [b[0].tolist() for b in torch.utils.data.DataLoader(ds, batch_sampler=s)]
    assert out == list(s)  # the loader yields exactly the sampler's rows, in its order


def test_tagged_branches_name_each_rows_branch() -> None:
    """EKD-style batches (a random half, a balanced half) reach the objectives with each row's branch, even
    after an unreadable row is dropped."""
    labels = _labels(12, seed=3)
    tagged = TaggedBranches(
        MultiBranchBatchSampler([Branch(len(labels), 4, "random"), Branch(labels, 4, "balanced", 2)], seed=2),
        ("random", "balanced"),
    )
    (first, *_) = list(tagged)
    assert [b for _, b in first] == [0, 0, 0, 0, 1, 1, 1, 1]
    balanced = [i for i, b in first if b == 1]
    assert (labels[balanced].reshape(2, 2) == labels[balanced].reshape(2, 2)[:, :1]).all()

    class Faces:
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            if i == first[1][0]:  # the second row is unreadable
                return None, f"img{i}: truncated", i, False
            return np.full((2, 2, 3), i, np.uint8), int(labels[i]), i, i % 2 == 1

    batch = collate_faces([TaggedRows(Faces())[key] for key in first])
    assert batch.skipped == [f"img{first[1][0]}: truncated"]
    assert batch.branch.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert batch.indices.tolist() == [i for j, (i, _) in enumerate(first) if j != 1]
    plain = collate_faces([Faces()[i] for i in (0, 2)])
    assert plain.branch is None and TaggedRows(Faces())[0][4] == 0
    assert plain.mirrored.tolist() == [False, False] and batch.mirrored.tolist() == [
        i % 2 == 1 for j, (i, _) in enumerate(first) if j != 1
    ]


def test_multi_branch_sizes_offsets_split_and_resume() -> None:
    easy = _labels(12, seed=1)
    hard_len = 50
    general_len = 64
    branches = [
        Branch(general_len, 8),  # general: random samples
        Branch(easy, 8, "balanced", k=2),  # 4 identities x 2
        (hard_len, 5, "random"),
    ]
    s = MultiBranchBatchSampler(branches, seed=7)
    assert s.offsets == [0, general_len, general_len + len(easy)]
    assert len(s) == general_len // 8
    batches = list(s)
    for b in batches:
        assert len(b) == 21
        g, e, h = s.to_local(b)
        assert len(g) == 8 and len(e) == 8 and len(h) == 5
        assert g.min() >= 0 and g.max() < general_len
        assert e.min() >= 0 and e.max() < len(easy)
        assert h.min() >= 0 and h.max() < hard_len
        assert (easy[e].reshape(4, 2) == easy[e].reshape(4, 2)[:, :1]).all()
        assert len(set(g.tolist())) == 8
    # branch 0 is one pass over its samples
    assert sorted(np.concatenate([s.to_local(b)[0] for b in batches]).tolist()) == list(range(general_len))
    parts = s.split(torch.arange(21))
    assert [len(p) for p in parts] == [8, 8, 5]
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=5)
    assert list(s) == full[5:]


def test_multi_branch_disjoint_ranks() -> None:
    easy = _labels(16, seed=2)
    per_rank = [
        list(
            MultiBranchBatchSampler(
                [(40, 4, "random"), (easy, 4, "balanced", 2)], seed=1, rank=r, world_size=2
            )
        )
        for r in range(2)
    ]
    for a, b in zip(*per_rank, strict=True):
        assert not set(a[:4]) & set(b[:4])
        assert not set(easy[np.asarray(a[4:]) - 40].tolist()) & set(easy[np.asarray(b[4:]) - 40].tolist())
    with pytest.raises(ValueError, match="needs labels"):
        MultiBranchBatchSampler([(10, 2, "balanced")])
