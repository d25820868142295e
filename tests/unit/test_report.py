"""Reports group runs into arms (equal settings but the seed) and never pool runs that differ: by hand, on
run folders written here with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sfedlora.config import load_config, to_dict
from sfedlora.runtime.records import summarise
from sfedlora.tools.arms import find_runs, group_arms
from sfedlora.tools.report import arms_table, build_report


def fake_run(folder: Path, overrides: list[str], curve: list[float], ranks: list[int] | None = None) -> Path:
    """A finished run folder whose personal (and validation) accuracy per round 0.. is `curve`."""
    cfg = load_config(None, ["fed.clients=3", *overrides])
    ranks = ranks or [cfg.lora.rank] * cfg.fed.clients
    scaling = {"sfed-lora": "sfed", "fedsa-lora": "lora", "fedit": "lora"}.get(cfg.fed.method, "lora")
    scaling = scaling if cfg.lora.scaling == "auto" else cfg.lora.scaling
    resolved = {"task": "classification", "scaling": scaling, "init": "independent", "ranks": ranks,
                "n_averaged": cfg.fed.clients, "precision": "fp32", "gammas": [1.0] * len(ranks)}
    records = []
    for rnd, acc in enumerate(curve):
        block = {"accuracy": {"uniform": acc, "weighted": acc}}
        records.append({"round": rnd, "eval": {"personal": {"val": block, "test": block}},
                        "grad_norm_A_steps": [[0.1, 0.2]] * 3 if rnd else None,
                        "grad_norm_B_steps": [[0.1, 0.2]] * 3 if rnd else None,
                        "adapter_out_var": [0.01] * 3, "adapter_out_mean": [0.001] * 3,
                        "energy_beyond_rmin": 0.1 if rnd else None, "effective_rank": 2.0 if rnd else None})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**to_dict(cfg), "resolved": resolved}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps(summarise(records, "classification")))
    return folder


def table(tmp_path: Path) -> dict[str, dict[str, str]]:
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = arms_table(arms)
    return {" ".join(row[: len(arms[0].label)]): dict(zip(header, row)) for row in body}


def test_runs_that_differ_in_any_setting_are_separate_arms(tmp_path):
    """IID and Dirichlet runs of one method and rank are two arms: mean ± std over each arm's seeds only
    (before: one cell, 0.5667 ± 0.1528 'over seeds', mixing the partitions)."""
    fake_run(tmp_path / "runs" / "a", ["data.partition=iid", "seed=0"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "b", ["data.partition=iid", "seed=1"], [0.2, 0.7])
    fake_run(tmp_path / "runs" / "c", ["data.partition=dirichlet", "seed=0"], [0.2, 0.4])
    rows = table(tmp_path)
    assert set(rows) == {"iid", "dirichlet"}
    assert rows["iid"]["seeds"] == "2" and rows["iid"]["personal test (best on val)"] == "0.6500 ± 0.0707"
    assert rows["dirichlet"]["seeds"] == "1" and rows["dirichlet"]["personal test (best on val)"] == "0.4000"


def test_a_seed_counts_once(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["seed=0"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "b", ["seed=0"], [0.2, 0.8])  # the same run twice: not two seeds
    fake_run(tmp_path / "runs" / "c", ["seed=1"], [0.2, 0.7])
    (arm,), _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert sorted(arm.seeds) == [0, 1] and len(arm.duplicates) == 1
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Left out, as repeats of a seed their arm already has: 1 run(s)" in md


def test_a_plain_method_comparison_is_plotted_and_labelled(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["fed.method=fedsa-lora"], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", ["fed.method=sfed-lora"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "c", ["fed.method=sfed-lora", "lora.scaling=none"], [0.2, 0.55])
    rows = table(tmp_path)
    assert set(rows) == {"fedsa-lora", "sfed-lora", "head-only (gamma=0)"}  # a method's own scaling is implied
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert (tmp_path / "rep" / "accuracy_by_round.png").stat().st_size > 0


def test_heterogeneous_runs_are_labelled_by_their_rank_set(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["fed.method=raflora", "lora.rank=8"], [0.2, 0.5], ranks=[2, 4, 8])
    fake_run(tmp_path / "runs" / "b", ["fed.method=raflora", "lora.rank=8"], [0.2, 0.6])
    assert set(table(tmp_path)) == {"2,4,8", "8"}
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert (tmp_path / "rep" / "energy_beyond_rmin.png").stat().st_size > 0


def test_runs_on_different_data_get_a_data_column(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["data.source=multiemo"], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", ["data.source=vitaminc"], [0.2, 0.6])
    arms, varying, common = group_arms(find_runs([tmp_path / "runs"]))
    assert varying == ["data.source"] and [a.label for a in arms] == [{"data": "multiemo"}, {"data": "vitaminc"}]
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| data | seeds |" in md and "model minilm-l6" in md  # shared settings are stated once


@pytest.mark.parametrize("key", ["seed=3", "checkpoint_every=0", "train.group_size=1"])
def test_settings_that_do_not_change_results_do_not_split_arms(tmp_path, key):
    fake_run(tmp_path / "runs" / "a", [], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", [key], [0.2, 0.6])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert len(arms) == 1
