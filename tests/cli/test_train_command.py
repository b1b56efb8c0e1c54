"""``faceforge train`` itself: the summary it prints, evaluation from eval.pairs and/or eval.benchmarks, and the
one-line errors of configs that cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from faceforge.cli.main import main


@pytest.fixture(scope="module")
def small(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory, list_file) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("train_cmd")
    held_out = tmp / "held_out"  # 3 images of each of 4 people not trained on
    for person in sorted(p for p in lfw_small.iterdir() if p.is_dir())[8:]:
        (held_out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(f, held_out / person.name / f.name)
    people = sorted(p.name for p in held_out.iterdir())
    same = [f"{n}\t{i}\t{j}" for n in people for i, j in ((1, 2), (1, 3), (2, 3))]
    diff = [
        f"{a}\t{i}\t{b}\t{i}" for i in (1, 2, 3) for a, b in zip(people, people[1:] + people[:1], strict=True)
    ]
    pairs = ["12", *same, *diff]  # 12 matched and 12 mismatched pairs: enough for 10 folds
    (tmp / "pairs.txt").write_text("\n".join(pairs) + "\n")
    return {"root": lfw_small, "list": list_file(lfw_small, tmp / "train.txt", per_person=4, people=8),
            "held_out": held_out, "pairs": tmp / "pairs.txt", "tmp": tmp}  # fmt: skip


def _train(small: dict[str, Path], run: Path, *more: str) -> int:
    return main(
        ["train", "lfw_mobilefacenet_arcface", f"data.root={small['root']}", f"data.list_file={small['list']}",
         "data.exclude_pairs=[]", "data.preload=false", "data.num_workers=0", "data.batch_size=16",
         "model.embedding_size=32", "optim.epochs=1", "run.progress=false", "run.precision=fp32",
         f"run.dir={run}", *more]
    )  # fmt: skip


def _printed_summary(out: str) -> dict:
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def test_benchmarks_without_pairs_print_their_numbers(small: dict[str, Path], capsys) -> None:
    """eval.benchmarks without eval.pairs (the KeyError('verification') of 0.1) and with both."""
    bench = f"eval.benchmarks=[allpairs:{small['held_out']}:2]"
    assert _train(small, small["tmp"] / "a", "eval.pairs=null", bench) == 0
    summary = _printed_summary(capsys.readouterr().out)
    assert summary["completed"] and summary["progress"]["global_step"] == 2
    assert (
        set(summary["eval"]) == {"allpairs:held_out"}
        and 0.0 < summary["eval"]["allpairs:held_out"]["auc"] <= 1
    )
    assert _train(small, small["tmp"] / "b", f"eval.pairs={small['pairs']}", f"eval.images={small['held_out']}",
                  bench) == 0  # fmt: skip
    summary = _printed_summary(capsys.readouterr().out)
    assert len(summary["eval"]) == 2 and "accuracy" in summary["eval"][f"lfw:{small['pairs'].stem}"]
    report = json.loads((small["tmp"] / "b" / "report.json").read_text())
    assert report["eval"] == summary["eval"]


def test_print_config_and_one_line_errors(small: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert _train(small, tmp_path / "p", "method=rkd", "--print-config") == 0
    printed = capsys.readouterr().out
    assert "objectives:" in printed and "rkd:" in printed and "teachers:" in printed
    cases = {
        "optim.epochs=-1": "optim.epochs=-1 must be an integer in [1, 100000]",
        "data.batch_size=0": "data.batch_size=0 must be an integer in [1, 65536]",
        "optim.lrr=1": "lrr",
        "distill.weight=2": "'distill' is gone",
        "objectives.margin=null": "no objective left",
        "objectives.arc.type=arcfase": "unknown objective type 'arcfase'",
    }
    for override, message in cases.items():
        assert _train(small, tmp_path / "x", override) == 2, override
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (
            override,
            err,
        )
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run: !!python/object/apply:os.system ['touch /tmp/faceforge_yaml_pwned']\n")
    assert main(["train", str(bad_yaml)]) == 2
    err = capsys.readouterr().err
    assert "is not plain YAML" in err and not Path("/tmp/faceforge_yaml_pwned").exists()
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: {dir: [unclosed\n")
    assert main(["train", str(broken)]) == 2
    assert "broken" in capsys.readouterr().err


def test_packaged_config_works_from_any_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    """${faceforge_data:} is $FACEFORGE_DATA, from any working directory; unset, a config that uses it says what
    to set or override, and works once the keys that use it are overridden (nothing is looked up beside the
    repository: an installed package has no repository)."""
    from faceforge.config import data_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path))
    assert data_folder() == str(tmp_path)
    assert main(["train", "lfw_mobilefacenet_arcface", "data.root=x", "--print-config"]) == 0
    assert f"{tmp_path}/lfw/pairsDevTest.txt" in capsys.readouterr().out
    monkeypatch.delenv("FACEFORGE_DATA")
    assert main(["train", "lfw_mobilefacenet_arcface", "data.root=x", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "export FACEFORGE_DATA=" in err and "data.exclude_pairs=[] eval.pairs=null" in err
    argv = ["train", "lfw_mobilefacenet_arcface", "data.root=x", "data.exclude_pairs=[]", "eval.pairs=null"]
    assert main([*argv, "--print-config"]) == 0
    assert main(["train", "mobilefacenet_arcface", "data.root=x", "--print-config"]) == 0
    assert "pairs: null" in capsys.readouterr().out
