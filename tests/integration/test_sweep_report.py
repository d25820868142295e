"""Sweeps expand, run and resume; reports read only run folders; the diagnose slope fit."""

from __future__ import annotations

import json
import math

import pytest
from conftest import lock_held_elsewhere

from sfedlora.cli import main
from sfedlora.errors import SfedloraError
from sfedlora.tools.diagnose import DiagnoseConfig, simulate
from sfedlora.tools.stats import slope
from sfedlora.tools.sweep import parse_only, plan

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


@pytest.fixture
def spec(tmp_path, sentiment_file):
    path = tmp_path / "spec.yaml"
    path.write_text(f"""
name: tiny
quick:
  set:
    model.name: tiny-bert
    model.precision: fp32
    data.source: {sentiment_file}
    data.task: classification
    data.text_field: sentence
    data.label_field: sentiment
    data.partition: iid
    fed.clients: 2
    fed.rounds: 2
    fed.local_steps: 2
    train.batch_size: 4
    eval.max_examples: 8
  grid:
    fed.method: [fedsa-lora, sfed-lora]
    lora.rank: [2, 8]
  also:
    - {{fed.method: sfed-lora, lora.rank: 2, lora.scaling: none}}
""")
    return path


def test_plan_expands_grid_and_extras(spec, tmp_path):
    runs = plan(str(spec), "quick", tmp_path / "out")
    assert [r.label for r in runs] == [
        "method=fedsa-lora_rank=2", "method=fedsa-lora_rank=8", "method=sfed-lora_rank=2", "method=sfed-lora_rank=8",
        "method=sfed-lora_rank=2_scaling=none"]
    assert "lora.rank=8" in runs[1].overrides and "fed.clients=2" in runs[1].overrides
    with pytest.raises(SfedloraError, match="no `paper` section"):
        plan(str(spec), "paper", tmp_path / "out")


def test_a_list_of_grids_runs_their_union_in_order(spec, tmp_path):
    text = spec.read_text().replace("""  grid:
    fed.method: [fedsa-lora, sfed-lora]
    lora.rank: [2, 8]
""", """  grid:
    - {train.optimizer: [sgd], train.lr: [0.1, 0.3]}
    - {train.optimizer: [adamw], train.lr: [0.001]}
""")
    spec.write_text(text)
    runs = plan(str(spec), "quick", tmp_path / "out")
    assert [r.label for r in runs] == ["optimizer=sgd_lr=0.1", "optimizer=sgd_lr=0.3", "optimizer=adamw_lr=0.001",
                                       "method=sfed-lora_rank=2_scaling=none"]
    spec.write_text(text.replace("- {train.optimizer: [adamw], train.lr: [0.001]}", "- [adamw]"))
    with pytest.raises(SfedloraError, match="list of such"):
        plan(str(spec), "quick", tmp_path / "out")
    spec.write_text(text.replace("train.lr: [0.001]", "train.lr: []"))
    with pytest.raises(SfedloraError, match="grid key train.lr must list at least one value"):
        plan(str(spec), "quick", tmp_path / "out")


def test_only_runs_a_slice_of_the_grid(spec, tmp_path, capsys):
    only = parse_only(["fed.method=sfed-lora", "lora.rank=2,8.0"])
    assert only == {"fed.method": ["sfed-lora"], "lora.rank": ["2", "8.0"]}
    labels = [r.label for r in plan(str(spec), "quick", tmp_path / "out", only=only)]
    assert labels == ["method=sfed-lora_rank=2", "method=sfed-lora_rank=8", "method=sfed-lora_rank=2_scaling=none"]
    labels = [r.label for r in plan(str(spec), "quick", tmp_path / "out", only=parse_only(["lora.scaling=none"]))]
    assert labels == ["method=sfed-lora_rank=2_scaling=none"]  # a key of the config, not of the grid
    with pytest.raises(SfedloraError, match="matches no run"):
        plan(str(spec), "quick", tmp_path / "out", only=parse_only(["lora.rank=4"]))
    with pytest.raises(SfedloraError, match="matches no run"):  # text YAML cannot read is compared as text
        plan(str(spec), "quick", tmp_path / "out", only=parse_only(["lora.rank=["]))
    with pytest.raises(SfedloraError, match="names no config key: lora.rnak"):
        plan(str(spec), "quick", tmp_path / "out", only=parse_only(["lora.rnak=2"]))
    with pytest.raises(SfedloraError, match="expected KEY=VALUE"):
        parse_only(["lora.rank"])
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s"), "--dry-run", "--only", "lora.rank=8"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["todo", "todo"]


def test_sweep_runs_resumes_and_reports(spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "5 runs, 0 already finished, 5 to run" in capsys.readouterr().out
    assert len(list(out.glob("*/summary.json"))) == 5
    (out / "method=sfed-lora_rank=8" / "summary.json").unlink()  # as if that run had died
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "5 runs, 4 already finished, 1 to run" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    rep = tmp_path / "rep"
    for name in ("accuracy_by_rank.png", "grad_norm_by_rank.png", "adapter_out_var_by_rank.png", "report.md"):
        assert (rep / name).stat().st_size > 0, name
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "sfed-lora" in page
    md = (rep / "report.md").read_text()
    assert "| method | rank 2 | rank 8 |" in md


def test_a_sweep_refuses_finished_runs_whose_data_changed(spec, sentiment_file, tmp_path, capsys):
    """Two records' labels swapped in the data file after the sweep ran: its finished runs are stale (before:
    '5 already finished, 0 to run', exit 0, with results on the old data)."""
    out = tmp_path / "sweep"
    only = ["--only", "lora.rank=2", "--only", "fed.method=sfed-lora"]
    assert main(["sweep", str(spec), "--out", str(out), *only]) == 0
    assert main(["sweep", str(spec), "--out", str(out), *only]) == 0
    assert "2 runs, 2 already finished, 0 to run" in capsys.readouterr().out
    lines = sentiment_file.read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["sentiment"], second["sentiment"] = second["sentiment"], first["sentiment"]
    sentiment_file.write_text("\n".join([json.dumps(first), json.dumps(second), *lines[2:]]) + "\n")
    assert main(["sweep", str(spec), "--out", str(out), *only]) == 2
    err = capsys.readouterr().err
    assert "2 finished run(s) were made on other data than their config reads now" in err
    assert "method=sfed-lora_rank=2_scaling=none" in err and "stale" in err


def test_a_second_sweep_process_leaves_the_runs_another_one_holds(spec, tmp_path, capsys):
    out = tmp_path / "sweep"
    held = out / "method=fedsa-lora_rank=8"
    with lock_held_elsewhere(held):
        assert main(["sweep", str(spec), "--out", str(out)]) == 0
        assert "method=fedsa-lora_rank=8: running in another process, left to it" in capsys.readouterr().out
        assert len(list(out.glob("*/summary.json"))) == 4 and not (held / "summary.json").exists()
    assert main(["sweep", str(spec), "--out", str(out)]) == 0  # its holder gone, the run is done now
    assert "5 runs, 4 already finished, 1 to run" in capsys.readouterr().out
    assert len(list(out.glob("*/summary.json"))) == 5


def test_report_without_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_slope_fit():
    assert slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    assert slope([1, 10], [5, 5]) == pytest.approx(0.0)
    assert math.isnan(slope([1, 2], [1, 0]))


def test_diagnose_rules_agree_when_they_should():
    cfg = DiagnoseConfig(width=64, rounds=2, steps=2)
    # N = 1: sfed's alpha*sqrt(1/r) is rsLoRA's alpha/sqrt(r), so the runs are identical
    assert simulate("sfed", 16, 1, cfg) == simulate("rslora", 16, 1, cfg)
    # r = 1, N = 1: all three rules give gamma = alpha
    assert simulate("lora", 1, 1, cfg) == simulate("sfed", 1, 1, cfg)
    # adaptive starts as rsLoRA; with a shared init it measures N_eff ~ 1 and stays there, where sfed's
    # outputs grow with N
    shared = {rule: simulate(rule, 16, 8, cfg, "shared") for rule in ("adaptive", "rslora", "sfed")}
    assert shared["adaptive"]["out_rms"] == pytest.approx(shared["rslora"]["out_rms"], rel=1e-3)
    assert shared["sfed"]["out_rms"] > 2 * shared["rslora"]["out_rms"]


def test_diagnose_cli_quick(tmp_path, capsys):
    assert main(["diagnose", "--quick", "--rounds", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "diagnose.json").read_text())
    assert set(result["slopes"]) == {f"{r} / {i}" for r in ("lora", "rslora", "sfed", "adaptive")
                                     for i in ("independent", "shared")}
    assert all(math.isfinite(v) for rule in result["slopes"].values() for axis in rule.values() for v in axis.values())
    assert (tmp_path / "diagnose.png").stat().st_size > 0
    assert "| sfed / independent |" in capsys.readouterr().out
