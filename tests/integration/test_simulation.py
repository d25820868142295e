"""Whole rounds in the in-process runner: what the FedSA family and FedIT leave on each client."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sfedlora.client.step import Held
from sfedlora.config import load_config
from sfedlora.simulation import Simulation

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false"]


def run_with_spy(sentiment_file, tmp_path, *extra):
    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, *extra])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    trained: dict[int, list[dict[str, torch.Tensor]]] = {}
    original = sim._train

    def spy(rnd, members, bar):
        for c, done in original(rnd, members, bar):
            trained.setdefault(rnd, {})[c] = dict(done.held.adapters)  # right after local training, before aggregation
            yield c, done

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


def test_evaluation_is_deterministic_with_adapter_dropout(sentiment_file, tmp_path):
    """lora.dropout > 0: training applies it (two steps from the same state differ by the dropout masks),
    evaluation never does (three evaluations of one model agree exactly), in both runners' code paths."""
    sim, _ = run_with_spy(sentiment_file, tmp_path, "fed.method=sfed-lora", "lora.dropout=0.5", "fed.rounds=1")
    assert any(bool(v.abs().sum() > 0) for k, v in sim.states[0].items() if k.endswith("lora_B"))
    evaluations = [sim._evaluate()[0]["personal"] for _ in range(3)]
    assert evaluations[0] == evaluations[1] == evaluations[2]
    assert not any(m.training for m in sim.model.modules())  # training left everything in eval mode
    before = sim.store.get(0)
    losses = []
    for seed in (1, 2):  # the same state and batches, different dropout masks
        sim.store.put(0, Held(dict(before.adapters), {}, copy.deepcopy(before.sampler)))
        torch.manual_seed(seed)
        losses.append(next(sim._train(2, [0], None))[1].stats["loss"])
    assert losses[0] != losses[1]


def test_flower_node_evaluation_is_deterministic_with_adapter_dropout(sentiment_file):
    from sfedlora.flower.node import Node

    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, "lora.dropout=0.5"])
    node = Node(cfg, 0, 3)
    state = node.fresh("independent", [4, 4, 4])
    g = torch.Generator().manual_seed(0)
    state["adapters"] = {k: torch.randn(v.shape, generator=g) if k.endswith("lora_B") else v
                         for k, v in state["adapters"].items()}
    replies = [node.step(state, {}, 1, 2.0, evaluate=True, train=False)[1]["eval"] for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]


def test_bytes_down_counts_what_the_round_participants_download(sentiment_file, tmp_path):
    """Two of four clients per round: bytes_down is the update (A and the head, for the FedSA family) sent to
    those two, not to all four (before: clients that did not take part were counted)."""
    sim, _ = run_with_spy(sentiment_file, tmp_path, "fed.method=sfed-lora", "fed.clients=4",
                          "fed.clients_per_round=2")
    per_client = 4 * sum(v.numel() for k, v in sim.states[0].items() if not k.endswith("lora_B"))  # fp32 A + head
    for r in [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()][1:]:
        assert len(r["participants"]) == 2 and r["bytes_down"] == 2 * per_client == r["bytes_up"]


def test_bytes_down_of_heterogeneous_ranks_is_each_participants_share(sentiment_file, tmp_path):
    """raFLoRA sends each participant its own rank's rows; FlexLoRA its top-r factors; FLoRA the whole stack."""
    for method in ("raflora", "flexlora", "flora"):
        sim, _ = run_with_spy(sentiment_file, tmp_path / method, f"fed.method={method}", "lora.ranks=[2,4,8]",
                              "fed.clients_per_round=1", "fed.rounds=3")
        records = [json.loads(x) for x in (tmp_path / method / "run" / "metrics.jsonl").open()][1:]
        layers = {k[: -len(".lora_A")]: v.shape[1] for k, v in sim.states[0].items() if k.endswith("lora_A")}
        d_out = {k[: -len(".lora_B")]: v.shape[0] for k, v in sim.states[0].items() if k.endswith("lora_B")}
        head = sum(v.numel() for k, v in sim.states[0].items() if "lora_" not in k)
        for r in records:
            rank = [2, 4, 8][r["participants"][0]]
            factors = sum(rank * (d_in + d_out[m]) for m, d_in in layers.items())
            expected = {"raflora": factors, "flora": factors, "flexlora": factors + rank * len(layers)}[method]
            assert r["bytes_down"] == 4 * (expected + head), method  # FlexLoRA adds the r singular values
