"""Whole rounds in the in-process runner: what the FedSA family and FedIT leave on each client."""

from __future__ import annotations

import torch

from sfedlora.config import load_config
from sfedlora.simulation import Simulation

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false"]


def run_with_spy(sentiment_file, tmp_path, *extra):
    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, *extra])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    trained: dict[int, list[dict[str, torch.Tensor]]] = {}
    original = sim._train

    def spy(rnd, members, bar):
        out = original(rnd, members, bar)
        trained[rnd] = [dict(s) for s in sim.states]  # right after local training, before aggregation
        return out

    sim._train = spy
    sim.run()
    return sim, trained


def keys(state, suffix):
    return [k for k in state if k.endswith(suffix)]


def test_sfed_lora_b_never_leaves_its_client(sentiment_file, tmp_path):
    sim, trained = run_with_spy(sentiment_file, tmp_path, "fed.method=sfed-lora")
    final, before = sim.states, trained[2]
    for c in range(3):
        for k in keys(final[c], "lora_B"):
            assert torch.equal(final[c][k], before[c][k])  # aggregation did not touch B
    k = keys(final[0], "lora_B")[0]
    assert not torch.equal(final[0][k], final[1][k]) and not torch.equal(final[1][k], final[2][k])
    a = keys(final[0], "lora_A")[0]
    assert torch.equal(final[0][a], final[1][a]) and torch.equal(final[1][a], final[2][a])  # A shared
    # A is the sample-weighted mean of the trained A's
    w = torch.tensor(sim.weights)
    expected = sum(w[c] * before[c][a] for c in range(3))
    torch.testing.assert_close(final[0][a], expected)


def test_fedit_leaves_every_client_identical(sentiment_file, tmp_path):
    sim, _ = run_with_spy(sentiment_file, tmp_path, "fed.method=fedit")
    for k in sim.states[0]:
        assert torch.equal(sim.states[0][k], sim.states[1][k]) and torch.equal(sim.states[1][k], sim.states[2][k])


def test_ffa_lora_keeps_the_shared_a(sentiment_file, tmp_path):
    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, "fed.method=ffa-lora"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    initial = [dict(s) for s in sim.states]
    sim.run()
    for k in keys(initial[0], "lora_A"):
        for c in range(3):
            assert torch.equal(sim.states[c][k], initial[0][k])
