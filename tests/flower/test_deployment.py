"""sfedlora on real Flower processes: a local deployment (SuperLink + SuperNodes on 127.0.0.1) and Flower's
simulation engine, each against the in-process runner."""

from __future__ import annotations

import pytest
import torch
from flower_grid import node_state, node_states

from sfedlora.config import load_config
from sfedlora.flower import deploy
from sfedlora.simulation import Simulation

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false", "train.group_size=1"]


def tiny(sentiment_file, clients=3, *extra):
    return load_config(None, [f"data.source={sentiment_file}", *TINY, f"fed.clients={clients}", *extra])


@pytest.mark.slow
def test_local_deployment_matches_in_process_runner(sentiment_file, tmp_path):
    """SuperLink + 2 SuperNodes on 127.0.0.1, 2 rounds of SFed-LoRA; every wait bounded; every process
    started is stopped by its PID; final adapters equal the in-process runner's to float32 tolerance."""
    overrides = [f"data.source={sentiment_file}", *TINY, "fed.clients=2"]
    state, out = tmp_path / "deploy", tmp_path / "run"
    procs = deploy.up(2, state, port=39700)
    pids = list(procs["pids"].values())
    try:
        summary = deploy.submit(state, out, None, overrides, {"round-timeout": 300.0, "node-wait": 60.0}, timeout=400)
    finally:
        stopped = deploy.down(state)
    assert sorted(stopped) == ["superlink", "supernode-0", "supernode-1"]
    assert not any(deploy._alive(pid) for pid in pids)
    assert summary["engine"] == "flower" and summary["rounds"] == 2
    sim = Simulation(load_config(None, overrides), tmp_path / "inproc", echo=lambda s: None, progress=False)
    sim.run()
    for p in range(2):
        node = node_state(state / f"node-{p}", out, p)
        for k in node:
            torch.testing.assert_close(node[k], sim.states[p][k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_flower_simulation_engine_matches_in_process_runner(sentiment_file, tmp_path, monkeypatch):
    """The same apps in Flower's simulation engine (Ray): same final adapters as the in-process runner."""
    from sfedlora.flower.simulate import simulate

    monkeypatch.setenv("SFEDLORA_CACHE", str(tmp_path / "cache"))  # virtual nodes keep state under the cache
    cfg = tiny(sentiment_file, 2)
    summary = simulate(cfg, tmp_path / "run")
    assert summary["engine"] == "flower" and summary["personal"]["last"]["round"] == 2
    sim = Simulation(cfg, tmp_path / "inproc", echo=lambda s: None, progress=False)
    sim.run()
    for p, state in enumerate(node_states(tmp_path / "cache" / "nodes", tmp_path / "run", 2)):
        for k in state:
            torch.testing.assert_close(state[k], sim.states[p][k], rtol=1e-5, atol=1e-6)
