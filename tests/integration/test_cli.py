"""The CLI end to end on a tiny random model, and every bad input: one clear message, exit 2,
no traceback, no run folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sfedlora.cli import main

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4"]


@pytest.mark.slow
def test_run_end_to_end_through_the_cli(sentiment_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sfedlora.cli", "run", f"data.source={sentiment_file}", *TINY, "--out", str(out),
         "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "gamma = 6.928 (alpha 8.0, r 4, N 3)" in proc.stdout  # 8 * sqrt(3 / 4), 4 digits
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["resolved"]["scaling"] == "sfed" and cfg["resolved"]["init"] == "independent"
    assert cfg["resolved"]["gamma"] == pytest.approx(8 * (3 / 4) ** 0.5)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]  # round 0: the base model's evaluation
    assert records[0]["train_loss"] == {} and records[0]["eval"]["personal"]["test"]
    for r in records[1:]:
        assert r["n_clients"] == 3 and list(r["train_loss"]) == list(r["grad_norm_A"]) == list(r["gamma"]) == (
            ["0", "1", "2"] if r["round"] else [])  # per client that trained, by index
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["wall_s"] > 0
        assert "weighted" in r["eval"]["personal"]["test"]["accuracy"]
        assert 0 <= r["eval"]["global"]["test"]["accuracy"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["personal"]["best"]["round"] in (0, 1, 2)
    parts = json.loads((out / "partitions.json").read_text())
    assert sum(p["train"] + p["val"] + p["test"] for p in parts) == 240


def test_methods_lists_citations(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "sfed-lora" in text and "2603.08058" in text and "ICLR 2025" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["fed.method=bogus"], "fed.method must be one of"),
        (["lora.scaling=bogus"], "lora.scaling must be one of"),
        (["lora.rank=0"], "must be > 0"),
        (["fed.clients=0"], "number of clients N"),
        (["lora.alpha=0"], "LoRA alpha"),
        (["lora.targets=[nope]"], "match no linear module"),
        (["data.text_field=body"], "has no field 'body'"),
        (["data.partition=dirichlet", "data.min_partition_size=70"], "Dirichlet split"),
        (["fed.method=ffa-lora", "lora.init=independent"], "lora.init=shared"),
        (["fed.method=rolora", "lora.init=independent"], "averages B in round 1 while each client keeps its own A"),
    ],
)
def test_bad_input_is_one_clear_message(extra, message, sentiment_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", f"data.source={sentiment_file}", *TINY, *extra, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists(), "a failed run must not leave a folder that looks like a result"


def test_unreadable_config_and_missing_data(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert main(["run", "data.source=missing.jsonl", "data.task=classification"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sfedlora.cli", "run", "lora.rank=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "lora.rank" in proc.stderr


def test_a_folder_named_like_a_built_in_config_or_spec_is_not_read_as_one(tmp_path, monkeypatch):
    """`sfedlora run default` and `sfedlora sweep rank-sweep` from a folder that holds run folders called
    `default` and `rank-sweep` (before: "cannot read config default: Is a directory")."""
    from sfedlora.config import CONFIG_DIR, config_path
    from sfedlora.tools.sweep import EXPERIMENT_DIR, spec_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "rank-sweep").mkdir()
    assert config_path("default") is None  # the schema's defaults
    assert config_path("syllogism") == CONFIG_DIR / "syllogism.yaml"
    (tmp_path / "syllogism").mkdir()
    assert config_path("syllogism") == CONFIG_DIR / "syllogism.yaml"
    assert spec_path("rank-sweep") == EXPERIMENT_DIR / "rank-sweep.yaml"


def test_version(capsys):
    import sfedlora

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sfedlora {sfedlora.__version__}"


def test_options_may_stand_anywhere_among_the_items(sentiment_file, tmp_path, capsys):
    """`sfedlora run CONFIG --out DIR key=value`: before, 'unrecognized arguments: fed.rounds=1'."""
    out = tmp_path / "run"
    assert main(["run", f"data.source={sentiment_file}", "--out", str(out), *TINY, "fed.rounds=1", "--quiet",
                 "eval.max_examples=4"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["fed"]["rounds"] == 1 and cfg["eval"]["max_examples"] == 4 and cfg["lora"]["rank"] == 4
    with pytest.raises(SystemExit):
        main(["run", "--out", str(tmp_path / "x"), "fed.rounds=1", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
