"""The embedded default needs nothing from outside: with an empty cache and every download refused (no pip,
no hub, no network), every built-in data set loads and one short round of the default run finishes; and every
preset and every quick experiment reads a built-in set. A default that needed a download (as the old one's
bigbench sdist did, until the registry stopped serving it) fails here."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from sfedlora.cli import main
from sfedlora.config import DataConfig, builtin_configs, load_config
from sfedlora.data.builtin import BUILTIN
from sfedlora.data.sources import load_task
from sfedlora.runtime import rundir
from sfedlora.tools.sweep import builtin_specs, plan

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


class Refused(RuntimeError):
    pass


@pytest.fixture
def cut_off(tmp_path, monkeypatch):
    """An empty cache, and no way out: network connections, subprocesses (pip) and the hub's loaders refuse."""
    monkeypatch.setenv("SFEDLORA_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))

    def refuse(*args, **kwargs):
        raise Refused(f"a download was attempted: {args[:2]}")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        refuse(address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    real_popen = subprocess.Popen

    class Popen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args, *rest, **kwargs):
            words = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            if any(tool in words for tool in ("pip", "curl", "wget", "git ", "huggingface")):
                refuse(words)  # a package or file download; other tools (ldconfig for ctypes) may run
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Popen)  # subprocess.run and friends go through Popen
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    return tmp_path / "empty-cache"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_set_loads_with_nothing_from_outside(cut_off, name):
    task = load_task(DataConfig(source=name, max_examples=60), seed=0)
    assert task.task == BUILTIN[name].task and len(task.records) == 60
    assert task.counts["skipped_bad"] == 0
    if task.task == "classification":
        assert len(task.label_names) >= 2


def test_bbc_news_is_the_whole_corpus(cut_off):
    task = load_task(DataConfig(source="bbc-news", max_examples=0), seed=0)
    assert task.counts["read"] == 2225 and task.label_names == ["business", "entertainment", "politics", "sports",
                                                                 "tech"]
    sport = [r for r in task.records if r["label"] == 3]
    assert len(sport) == 511 and all(len(r["text"]) > 100 for r in sport)


def test_one_round_of_the_default_run_with_nothing_from_outside(cut_off, tmp_path):
    out = tmp_path / "run"
    # the default run, cut to one short round (the README's `make run` runs the same code, CI runs it whole)
    assert main(["run", "fed.rounds=1", "fed.local_steps=2", "data.max_examples=600", "eval.max_examples=10",
                 "--out", str(out), "--quiet"]) == 0
    cfg, resolved = rundir.read(out)
    assert cfg.data.source == "bbc-news" and cfg.model.name == "minilm-l6"
    recs = rundir.records(out)
    assert [r["round"] for r in recs] == [0, 1] and all(x > 0 for x in recs[1]["grad_norm_B"].values())


def test_every_preset_and_quick_experiment_reads_a_builtin_set():
    sources = {name: load_config(name, []).data.source for name in builtin_configs()}
    for spec in builtin_specs():
        for run in plan(spec, "quick", Path("/nonexistent")):
            sources[f"{spec}/{run.folder.name}"] = run.config.data.source
    outside = {k: v for k, v in sources.items() if v not in BUILTIN}
    assert not outside, outside
