"""benchmarks/finetune.py: its rows as configs, the aggregation over seeds, the table and the full-run estimate,
on hand-made per-run numbers (the script trains and evaluates; this checks what it does with the results)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from faceforge.config import compose_config
from faceforge.core.schema import FinetuneConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_naive_row_is_the_recipe_with_every_option_off(bench, tmp_path: Path) -> None:
    base = [f"data.root={tmp_path}", f"run.init={tmp_path / 'x.pt'}"]
    naive = compose_config(bench.RECIPE, [*base, *bench.NAIVE])
    recipe = compose_config(bench.RECIPE, base)
    assert dict(naive.finetune) == {**FinetuneConfig().__dict__, "freeze": []}
    assert dict(recipe.finetune) != dict(naive.finetune)
    # same data, head, optimiser and epochs in both rows
    for section in ("data", "head", "optim", "model"):
        assert naive[section] == recipe[section], section


def _run(acc: float, tar: float, images_per_s: float = 10.0) -> dict:
    return {"pairs_accuracy": acc, "allpairs_tar@far=1e-3": tar, "eval_images": 100, "eval_seconds": 20.0,
            "training": {"images_per_s": images_per_s, "setup_seconds_incl_class_means": 50.0, "num_images": 500}}  # fmt: skip


def test_summary_table_and_estimate(bench) -> None:
    runs = {"0": _run(0.98, 0.90), "1": _run(0.97, 0.92), "2": _run(0.99, 0.88)}
    s = bench.summarise(runs)
    assert s["n"] == 3 and s["pairs_accuracy"] == pytest.approx(0.98)
    assert s["pairs_accuracy_std"] == pytest.approx(0.01) and s["allpairs_tar@far=1e-3_std"] == pytest.approx(
        0.02
    )
    imported = {
        "-": {"pairs_accuracy": 0.99, "allpairs_tar@far=1e-3": 0.95, "eval_images": 100, "eval_seconds": 10.0}
    }
    result = {
        "models": {"m": {"rows": {
            "imported": {"runs": imported, "summary": bench.summarise(imported)},
            "naive": {"runs": runs, "summary": s},
        }}},
        "settings": {"train_images": 500, "train_people": 90, "epochs": 2, "pairs": "p.txt", "quick": True},
    }  # fmt: skip
    text = bench.table(result)
    assert "| m | as imported (no training) | 99.00 % | 95.00 % | - |" in text
    assert "| 98.00 % ± 1.00 | 90.00 % ± 2.00 | 3 |" in text and "QUICK" in text
    est = bench.estimate_full(result, full_images=1000, full_epochs=3, seeds=3)
    # eval: the mean of 10 s and 3 x 20 s per 100 images, x 1655; the naive row (the only trained one here):
    # 3 seeds x (1000 x 3 / 10 img/s of training + 1000 x 0.1 s of set-up and class means + that eval)
    eval_s = (10 + 3 * 20) / 4 / 100 * 1655
    assert est["hours_per_model"]["m"] == pytest.approx((eval_s + 3 * (300 + 100 + eval_s)) / 3600)


def test_selection_split_holds_out_every_fourth_training_person(bench, tmp_path: Path, monkeypatch) -> None:
    """--select trains on three quarters of the training people and scores the other quarter: the two sets are
    disjoint, the DevTest people are in neither, and every held-out image is copied for the all-pairs set."""
    faces = tmp_path / "faces"
    people = [f"person_{i:02d}" for i in range(8)] + ["devtest_a", "single"]
    for name in people:
        (faces / name).mkdir(parents=True)
        for k in range(1 if name == "single" else 3):
            (faces / name / f"{name}_{k:04d}.jpg").write_bytes(b"\xff\xd8\xff")  # listed by name only
    monkeypatch.setattr(bench, "pairs_people", lambda *files: {"devtest_a"})
    list_file, images, n_images, n_held = bench.selection_split(faces, tmp_path / "out")
    trained = {line.split("/")[0] for line in list_file.read_text().splitlines()}
    held = {p.name for p in images.iterdir() if p.is_dir()}
    eligible = sorted(p for p in people if p.startswith("person_"))
    assert held == set(eligible[3::4]) and n_held == 2
    assert trained == set(eligible) - held and n_images == 3 * len(trained)
    assert sum(1 for _ in images.glob("*/*.jpg")) == 3 * n_held
    # the recipe's own values are the first candidate, and every candidate composes
    first = next(iter(bench.CANDIDATES.values()))
    assert first == []
    for overrides in bench.CANDIDATES.values():
        compose_config(bench.RECIPE, [f"data.root={tmp_path}", f"run.init={tmp_path / 'x.pt'}", *overrides])
