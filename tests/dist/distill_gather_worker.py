"""Run under torchrun by tests/engine/test_distributed.py: distillation objectives on several gloo ranks.

Each rank holds a slice of one fixed global batch (rank 0 rows 0-3, rank 1 rows 4-7, or an uneven split)
and writes ``OUT/rank{r}.pt`` with, per case, the term and the gradients of its own rows, next to the
reference: the whole global batch through the same objective in one process, nothing gathered.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from faceforge.core import distributed as D
from faceforge.objectives import OBJECTIVES, Objective, ObjectiveContext, StepBatch
from faceforge.objectives.teacher_bank import TeacherBank

LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
#: method -> rows of each rank (rank 0, rank 1); sp runs on an uneven split (a batch that lost images)
CASES = {
    "rkd": ([0, 1, 2, 3], [4, 5, 6, 7]),
    "sp": ([0, 1, 2, 3, 4, 5], [6, 7]),
    "ekd": ([0, 1, 2, 3], [4, 5, 6, 7]),
    "ddl": ([0, 1, 2, 3], [4, 5, 6, 7]),
    "feature_l2": ([0, 1, 2, 3], [4, 5, 6, 7]),
}


class FakeTeacher:
    """A deterministic 'teacher': the first 12 pixel values of the face, as floats."""

    embedding_size = 12
    input_size = 8

    def describe(self) -> dict:
        return {"kind": "fake", "sha256": "0" * 64}

    def embed(self, faces: np.ndarray) -> np.ndarray:
        return faces.reshape(len(faces), -1)[:, :12].astype(np.float32) - 127.5


class FakeFaces:
    def __len__(self) -> int:
        return len(LABELS)

    def image(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def build(method: str, gather: bool = True, gather_grad: str = "exact") -> Objective:
    bank = TeacherBank([{"model": "fake"}], FakeFaces(), "none", False, lambda spec, opts: FakeTeacher())
    ctx = ObjectiveContext(
        embedding_size=16,
        num_classes=4,
        labels=LABELS,
        classes=["a", "b", "c", "d"],
        dataset=FakeFaces(),
        teacher=None if method == "ddl" else bank.table,
        teacher_names=[] if method == "ddl" else bank.names,
    )
    return OBJECTIVES.get(method)(ctx, gather=gather, gather_grad=gather_grad)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)


def term(method: str, rows: list[int], gather: bool = True, gather_grad: str = "exact") -> dict:
    """The term on ``rows`` of the global batch, and the gradients of those rows."""
    emb, hard = global_batch()
    e = emb[rows].clone().requires_grad_(True)
    x = hard[rows].clone().requires_grad_(True) if method == "ddl" else None
    torch.manual_seed(0)  # the same learned projection (feature_l2) on every rank and in the reference
    d = build(method, gather, gather_grad)
    out = d(StepBatch(e, torch.as_tensor(LABELS[rows]), torch.as_tensor(rows), extra=x))
    loss = out.terms["loss"]
    loss.backward()
    return {
        "loss": loss.detach(),
        "grad": e.grad.detach(),
        "extra_grad": None if x is None else x.grad.detach(),
        "global_batch": d.describe()["global_batch"],
    }


def main(out: Path) -> None:
    ctx = D.init_distributed("cpu")
    results = {m: term(m, rows[ctx.rank]) for m, rows in CASES.items()}
    results["rkd_per_rank"] = term("rkd", CASES["rkd"][ctx.rank], gather=False)
    # TFace's AllGather gradient (x world size), as objectives.<name>.gather_grad=tface reproduces it
    results["tface"] = {m: term(m, CASES[m][ctx.rank], gather_grad="tface") for m in ("rkd", "ekd", "ddl")}
    # the reference: the whole global batch in this process, nothing gathered
    results["reference"] = {m: term(m, list(range(len(LABELS))), gather=False) for m in CASES}
    torch.save(results, out / f"rank{ctx.rank}.pt")
    D.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
