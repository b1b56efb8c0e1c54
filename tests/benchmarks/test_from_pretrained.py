"""benchmarks/from_pretrained.py: every row composes into a valid config from the dlib import, the rows a run needs,
the aggregation, table and full-run estimate on hand-made numbers, and (slow) a slice of the quick mode on real data:
the plain, CIFP and DDL rows fine-tuned from the real dlib import on real LFW people."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from faceforge.config import compose_config


@pytest.fixture(scope="module")
def bench():
    # imported by name (the benchmarks folder is on pytest's pythonpath): its dataclasses need it in sys.modules
    return importlib.import_module("from_pretrained")


def _ctx(bench, tmp_path: Path, result: dict | None = None):
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    runs = {"runs": {"0": {"model": str(model)}}}
    result = result or {"rows": {"plain": runs, "mtlface_age": runs}}
    return bench.Context(model, tmp_path, tmp_path, tmp_path / "l.txt", tmp_path / "p.txt", tmp_path, 1,
                         list(bench.ROWS), bench.recipe_phase_keys(1), result, ages=tmp_path / "ages.csv")  # fmt: skip


def test_every_row_composes_from_the_import(bench, tmp_path: Path) -> None:
    ctx = _ctx(bench, tmp_path)
    base = [f"run.init={ctx.model}", f"data.root={tmp_path}", *ctx.phase_keys]
    plain = compose_config("finetune", base)
    assert plain.finetune.head_only_epochs == pytest.approx(1 / 3, abs=1e-3)  # scaled into a 1-epoch run
    assert bench.recipe_phase_keys(3) == []  # the recipe's own phases fit in 3 epochs
    for name, row in bench.ROWS.items():
        keys = row.overrides(ctx, 0)
        if row.kind == "finetune":
            cfg = compose_config("finetune", [*base, *keys])
            # the same import, data, head, optimiser and epochs as plain: only the method's keys differ
            assert cfg.run.init == str(ctx.model) and cfg.optim == plain.optim and cfg.head == plain.head, (
                name
            )
            assert cfg.finetune == plain.finetune, name
        elif row.kind == "student":
            cfg = compose_config(bench.STUDENT_RECIPE, [f"data.root={tmp_path}", *keys])
            assert cfg.teachers[0].model == str(ctx.model) and cfg.model.name == "mobilefacenet", name
    cifp = compose_config("finetune", [*base, *bench.ROWS["cifp"].overrides(ctx, 0)])
    assert cifp.objectives.margin is None and cifp.objectives.cifp.penalty == "code_mean"
    mtl = compose_config("finetune", [*base, *bench.ROWS["mtlface_age"].overrides(ctx, 0)])
    assert mtl.model.name == "aifr_dlib_resnet" and mtl.run.init_partial and mtl.head.name == "arcface"
    assert mtl.objectives.age.channels == 256 and mtl.objectives.age_adversarial.weight == 0.002
    ddl = compose_config("finetune", [*base, *bench.ROWS["ddl"].overrides(ctx, 0)])
    paper = compose_config("paper_ddl", [f"run.init={ctx.model}", f"data.root={tmp_path}"])
    assert ddl.objectives == paper.objectives and ddl.data.batch_size == paper.data.batch_size == 96
    liaad = compose_config(bench.STUDENT_RECIPE, [f"data.root={tmp_path}", *bench.ROWS["liaad_student"].overrides(ctx, 0)])  # fmt: skip
    assert len(liaad.teachers) == 2 and "liaad" in liaad.objectives


def test_rows_a_run_needs_and_their_evaluations(bench) -> None:
    assert bench.plan_rows(["liaad_student"]) == ["plain", "mtlface_age", "liaad_student"]
    assert bench.plan_rows(["imported"]) == ["imported"]
    assert bench.plan_rows(["cifp", "ddl"]) == ["plain", "cifp", "ddl"]
    rows = ["imported", "plain", "cifp", "ddl"]
    assert bench.row_extras("plain", rows) == (
        "bias",
        "lowres",
    )  # what the other rows of the run are measured by
    assert bench.row_extras("imported", ["imported", "plain"]) == ()
    assert bench.row_extras("ddl", rows) == ("lowres",)
    with pytest.raises(SystemExit, match="unknown rows"):
        bench.plan_rows(["nope"])


def _rec(acc: float, ratio: float, extra: dict | None = None) -> dict:
    metrics = {"pairs_accuracy": acc, "allpairs_tar@far=1e-3": acc - 0.05, "race.fmr_ratio_floored": ratio,
               "race.log10_fmr_std": ratio / 10, "race.fmr.Asian": 0.002, **(extra or {})}  # fmt: skip
    seconds = {"train": {"seconds": 10.0, "scale": "train"}, "eval": {"seconds": 2.0, "scale": "eval"}}
    return {"model": "m.pt", "metrics": metrics, "seconds": seconds}


def test_summary_comparison_table_and_estimate(bench) -> None:
    runs = {
        "plain": {"0": _rec(0.98, 4.0), "1": _rec(0.96, 6.0)},
        "cifp": {"0": _rec(0.97, 2.0), "1": _rec(0.97, 2.0)},
    }
    result = {"rows": {r: {"runs": v, "summary": bench.summarise(v)} for r, v in runs.items()}, "stages": {
        "utk_prepare_bias": {"seconds": 5.0, "scale": "utk"}}}  # fmt: skip
    result["rows"]["ddl"] = {"runs": {}}
    s = {r: v["summary"] for r, v in result["rows"].items() if v.get("summary")}
    assert s["plain"]["pairs_accuracy"]["mean"] == pytest.approx(0.97)
    assert s["plain"]["pairs_accuracy"]["std"] == pytest.approx(0.02 / math.sqrt(2))
    comp = bench.comparisons(s)
    assert comp["cifp - plain"]["race.fmr_ratio_floored"] == pytest.approx(-3.0)
    assert comp["cifp target (fairness.py)"]["target_met"] is True  # ratio and spread down, accuracy kept
    result["comparison"] = comp
    result["settings"] = {"model_name": "dlib", "quick": True, "train_images": 70, "train_people": 20, "epochs": 1,
                          "seeds": [0, 1], "pairs": "p.txt", "eval_images": 72}  # fmt: skip
    factors = {"train": 3.0, "images": 2.0, "eval": 5.0, "utk": 10.0, "utk_train": 1.0, "once": 1.0}
    est = bench.estimate_full(result, factors, seed_factor=1.5)
    # per trained run 10 s x 3 + 2 s x 5 = 40 s, two runs per row, x 1.5 for the seeds; shared: 5 s x 10
    assert est["hours_per_row"]["plain"] == pytest.approx(2 * 40 * 1.5 / 3600)
    assert est["hours_shared_stages"] == pytest.approx(50 / 3600) and est["not_estimated"] == ["ddl"]
    result["full_run_estimate"] = est
    md = bench.markdown(result)
    assert "| plain | finetune recipe | 2 | 97.00 ± 1.41 % |" in md and "QUICK" in md
    assert "| cifp | 2.0 ± 0.0 |" in md and "cifp target (fairness.py): met" in md
    assert bench.FULL_COMMAND in md


# ------------------------------------------------------------------------------------------- real data, slow
# ``full``: 40 s here (the import fine-tuned three times); CI keeps the import's own training test
# (tests/importers/test_dlib_import.py) and the composition test above
@pytest.mark.slow
@pytest.mark.full
def test_quick_slice_on_real_data(bench, data_dir: Path, tmp_path: Path) -> None:
    """The quick mode's code on a smaller slice (the plain, CIFP and DDL rows: 40 training people, 20 + 20 pairs,
    300 UTKFace photos) from the real dlib import: every number present and finite, the fine-tuned rows well above
    80 % on the pairs (the import gives ~98 %), quick files only."""
    pytest.importorskip("dlib")
    from common import DEVTEST_PAIRS, write_training_list

    from faceforge.cli.main import main as faceforge
    from faceforge.data.align_folder import align_folder
    from faceforge.data.pairs import pairs_people, read_lfw_pairs

    model = tmp_path / "dlib.pt"
    assert faceforge(["import", "dlib", "--out", str(model)]) == 0
    # align just the people the slice uses: its training people and those of its pairs, picked as the script does
    raw = data_dir / "lfw" / "images"
    train_list, _, _ = write_training_list(
        raw, tmp_path / "raw.txt", pairs_people(DEVTEST_PAIRS), max_people=40
    )
    people = {line.split("/")[0] for line in train_list.read_text().split()[::2]}
    pairs = read_lfw_pairs(DEVTEST_PAIRS)
    for same in (True, False):
        people |= {n for p in [p for p in pairs if p.same == same][:20] for n in (p.name1, p.name2)}
    faces = tmp_path / "faces"
    files = [f for p in sorted(people) for f in sorted((raw / p).glob("*.jpg"))]
    align_folder(raw, data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", faces, landmark_offset=(-48, -48),
                 images=files, progress=False)  # fmt: skip
    out = tmp_path / "out"
    args = ["--quick", "--model", str(model), "--faces", str(faces), "--out", str(out), "--rows", "plain,cifp,ddl",
            "--quick-people", "40", "--quick-pairs", "20", "--quick-utk", "300"]  # fmt: skip
    result = bench.main(args)
    assert (out / "from_pretrained_quick.json").is_file() and (out / "from_pretrained_quick.md").is_file()
    assert not (out / "from_pretrained.json").exists()
    assert not result.get("failed"), result.get("failed")
    assert result["settings"]["train_people"] == 40 and result["settings"]["epochs"] == 1
    want = {
        "plain": ["race.fmr_ratio_floored", "race.log10_fmr_std", "lowres.tar@far=1e-3.24px", "lowres.tar@far=1e-3.16px"],
        "cifp": ["race.fmr_ratio_floored", "race.log10_fmr_std", "gender.fmr_ratio_floored"],
        "ddl": ["lowres.tar@far=1e-3.112px", "lowres.tar@far=1e-3.24px", "lowres.tar@far=1e-3.16px"],
    }  # fmt: skip
    for row, keys in want.items():
        metrics = result["rows"][row]["runs"]["0"]["metrics"]
        for key in ["pairs_accuracy", "allpairs_tar@far=1e-3", *keys]:
            assert key in metrics and math.isfinite(metrics[key]), (row, key)
        assert metrics["pairs_accuracy"] > 0.85, (row, metrics["pairs_accuracy"])
        assert 0.0 <= metrics["allpairs_tar@far=1e-3"] <= 1.0
        assert result["rows"][row]["summary"]["pairs_accuracy"]["n"] == 1
    est = result["full_run_estimate"]
    assert est["hours_total"] > 0 and set(est["hours_per_row"]) == {"plain", "cifp", "ddl"}
