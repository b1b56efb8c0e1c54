"""benchmarks/robustness.py: every row's training command composes into a valid config with the method it names,
and the aggregation and tables on hand-made per-run numbers (the script trains and evaluates; this checks the
rest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("robustness_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_row_is_a_valid_config(bench, tmp_path: Path) -> None:
    from faceforge.config import compose_config

    args = bench.main.__globals__["argparse"].Namespace(
        epochs=3, precision="auto", at_eps="4/255", afa_eps="8/255", train_steps=1, adv_fraction=0.5,
        min_scale=0.125, max_scale=0.5, fan_decoder_rows=16, init_overrides="", train_override=[],
        init_epochs=4,
    )  # fmt: skip
    data = {"faces": tmp_path, "pairs": tmp_path / "p.txt", "eval_folder": tmp_path}
    want = {"plain": "standard", "pgd_at": "pgd_at", "afa": "afa", "ddl": "standard", "fan": "fan",
            "randscale": "standard"}  # fmt: skip
    for row, method in want.items():
        cmd = bench.training_command(row, 1, data, tmp_path / row, args, None)
        cfg = compose_config(bench.RECIPE, cmd[cmd.index(bench.RECIPE) + 1 :])
        assert cfg.method.name == method and cfg.run.seed == 1 and cfg.optim.epochs == 3
        assert cfg.run.resume == "auto"  # an interrupted run goes on from its last epoch
        assert bench._same_run([c for c in cmd if c != bench.RESUME], cmd)  # runs saved before still reused
        assert not bench._same_run([*cmd, "run.seed=2"], cmd)
    cfg = compose_config(bench.RECIPE, [*bench.row_overrides("randscale", args), f"data.root={tmp_path}"])
    assert cfg.data.augment.lowres.min_scale == 0.125 and cfg.data.augment.lowres.p == 0.5
    cfg = compose_config(bench.RECIPE, [*bench.row_overrides("ddl", args), f"data.root={tmp_path}"])
    assert cfg.objectives.ddl.hard.lowres.max_scale == 0.5
    cfg = compose_config(bench.RECIPE, [*bench.row_overrides("afa", args), f"data.root={tmp_path}"])
    assert cfg.model.name == "dual_bn" and cfg.method.adv_fraction == 0.5 and cfg.method.steps == 1
    with pytest.raises(SystemExit, match="unknown row"):
        bench.row_overrides("nope", args)


def test_init_rows_are_the_finetune_recipe_with_the_method_on_the_same_people(bench, tmp_path: Path) -> None:
    """An ``--init`` row fine-tunes by the packaged recipe (a plain recipe's random head and full rate destroy a
    strong network), for ``--init-epochs``, with pairsDevTest's people left out as in the scratch rows."""
    from faceforge.config import compose_config

    args = bench.main.__globals__["argparse"].Namespace(
        epochs=2, precision="fp32", at_eps="4/255", afa_eps="8/255", train_steps=1, adv_fraction=0.5,
        min_scale=0.125, max_scale=0.5, fan_decoder_rows=16, init_overrides="finetune.head_only_epochs=0.5",
        train_override=[], init_epochs=3,
    )  # fmt: skip
    pairs = tmp_path / "pairsDevTest.txt"
    data = {"faces": tmp_path, "pairs": pairs, "eval_folder": tmp_path}
    ckpt = tmp_path / "dlib.pt"
    for row, method in {"plain": "standard", "pgd_at": "pgd_at", "fan": "fan", "ddl": "standard"}.items():
        cmd = bench.training_command(row, 0, data, tmp_path / row, args, ("dlib", str(ckpt)))
        assert cmd[cmd.index("train") + 1] == bench.INIT_RECIPE
        # run.init's checkpoint is read when the trainer builds the model, not when the config composes
        cfg = compose_config(bench.INIT_RECIPE, cmd[cmd.index(bench.INIT_RECIPE) + 1 :])
        assert cfg.method.name == method and cfg.optim.epochs == 3 and cfg.run.init == str(ckpt)
        assert cfg.run.init_head is False and cfg.finetune.backbone_lr_mult == 0.03
        assert cfg.finetune.head_only_epochs == 0.5  # --init-overrides come after the recipe's keys
        assert list(cfg.data.exclude_pairs) == [str(pairs)]
    scratch = bench.training_command("plain", 0, data, tmp_path / "p", args, None)
    assert (
        bench.RECIPE in scratch and "optim.epochs=2" in scratch and not any("run.init" in c for c in scratch)
    )


def test_aggregation_and_tables(bench) -> None:
    def ev(acc: float, tar16: float, a8: float | None) -> dict:
        out = {"pairs_accuracy": acc, "tar@far=1e-3": {"112": 0.5, "32": 0.4, "24": 0.3, "16": tar16}}
        if a8 is not None:
            out["attack"] = {e: {"accuracy": a8, "tar": 0.5, "far": 0.1} for e in bench.EPS_LABELS}
        return out

    runs = {"plain": {"0": {"eval": ev(0.80, 0.10, 0.30)}, "1": {"eval": ev(0.82, 0.20, 0.40)}},
            "pretrained:dlib": {"-": {"eval": {**ev(0.99, 0.6, None), "attack_refused": "cannot attack"}}}}  # fmt: skip
    summary = bench.aggregate(runs)
    assert summary["plain"]["pairs_accuracy"]["mean"] == pytest.approx(0.81)
    assert summary["plain"]["tar@112/16"]["std"] == pytest.approx(0.0707, abs=1e-3)
    md = bench.tables_md(summary, {"pretrained:dlib": "cannot attack"})
    assert "| plain | 2 | 81.0 ± 1.4 | 35.0 ± 7.1 |" in md and "not differentiable" in md
    assert "| pretrained:dlib | - | 50.0 | 40.0 | 30.0 | 60.0 |" in md


def test_an_evaluation_is_reused_only_for_the_same_model_and_options(
    bench, tmp_path: Path, monkeypatch
) -> None:
    calls = []

    def fake(model, tables, data, out, a):
        calls.append(model)
        return {"pairs_accuracy": 0.5 + len(calls) / 10}

    monkeypatch.setattr(bench, "evaluate", fake)
    model = tmp_path / "model.pt"
    model.write_bytes(b"one")
    a = bench.main.__globals__["argparse"].Namespace(precision="auto", attack_pairs=300, attack_steps=5,
                                                     lowres_mode="one")  # fmt: skip
    first = bench.evaluate_once(str(model), {"attack"}, {}, tmp_path / "eval", a)
    again = bench.evaluate_once(str(model), {"attack"}, {}, tmp_path / "eval", a)
    assert first["pairs_accuracy"] == again["pairs_accuracy"] == 0.6 and len(calls) == 1
    assert again["evaluated"].startswith("earlier")
    a.attack_steps = 10  # another option: evaluated again
    assert bench.evaluate_once(str(model), {"attack"}, {}, tmp_path / "eval", a)["pairs_accuracy"] == 0.7
    model.write_bytes(b"two")  # another model in the same place (a run trained again): evaluated again
    assert bench.evaluate_once(str(model), {"attack"}, {}, tmp_path / "eval", a)["pairs_accuracy"] == 0.8
    assert (
        bench.evaluate_once(str(model), {"attack", "lowres"}, {}, tmp_path / "eval", a)["pairs_accuracy"]
        == 0.9
    )


def test_merge_carries_earlier_runs_of_the_same_experiment_only(bench, tmp_path: Path) -> None:
    settings = {k: 1 for k in bench.MERGE_KEYS}
    old = {"benchmark": "robustness", "created": "then", "machine": {"cpu": "A"},
           "settings": {**settings, "precision": "auto"},
           "runs": {"plain": {"0": {"eval": {"pairs_accuracy": 0.8}}, "1": {"eval": {"pairs_accuracy": 0.7}}}}}  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(bench.json.dumps(old))
    record = {"settings": {**settings, "precision": "fp32"}, "runs": {}}
    assert bench.merge_runs(record, path) == ["plain/0", "plain/1"]
    carried = record["runs"]["plain"]["0"]
    assert carried["carried_from"] == {"file": str(path), "created": "then", "machine": {"cpu": "A"},
                                       "precision": "auto"}  # fmt: skip
    assert bench.aggregate(record["runs"])["plain"]["pairs_accuracy"]["mean"] == pytest.approx(0.75)
    # carried twice (a merge of a merged record): still names the first origin
    path.write_text(bench.json.dumps({**old, "runs": record["runs"]}))
    again = {"settings": record["settings"], "runs": {}}
    bench.merge_runs(again, path)
    assert again["runs"]["plain"]["1"]["carried_from"]["created"] == "then"
    with pytest.raises(SystemExit, match=r"a different experiment .*epochs: 1 there, 3 here"):
        bench.merge_runs({"settings": {**settings, "epochs": 3}, "runs": {}}, path)
    # the --init rows' settings matter only where both records have such rows
    both = {"init": "dlib=x.pt", "init_recipe": "finetune", "init_epochs": 3, "init_overrides": ""}
    bench.merge_runs({"settings": {**settings, **both, "init_epochs": 2}, "runs": {}}, path)  # none there
    path.write_text(bench.json.dumps({**old, "settings": {**old["settings"], **both},
                                      "runs": {"plain+dlib": {"0": {"eval": {"pairs_accuracy": 0.9}}}}}))  # fmt: skip
    bench.merge_runs({"settings": {**settings, "init": None}, "runs": {}}, path)  # none here
    with pytest.raises(SystemExit, match=r"init_epochs: 3 there, 2 here"):
        bench.merge_runs({"settings": {**settings, **both, "init_epochs": 2}, "runs": {}}, path)
    path.write_text('{"benchmark": "fairness"}')
    with pytest.raises(SystemExit, match=r"not a robustness\.json"):
        bench.merge_runs(record, path)
