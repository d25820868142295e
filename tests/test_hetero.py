"""Heterogeneous ranks: rank-partitioned and zero-padded averaging, FLoRA stacking, FlexLoRA's SVD,
padding that stays zero, and a whole heterogeneous run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from test_batched_equals_peft import lm_batches, run_sfedlora

from sfedlora.adapters.inject import init_adapter_state, inject_adapters, lora_layers
from sfedlora.config import TrainConfig, load_config
from sfedlora.core.aggregate import partition_n, partition_weights
from sfedlora.core.spectrum import spectrum_stats
from sfedlora.core.state import overlay, pad_state, truncate_state
from sfedlora.methods import get_method
from sfedlora.simulation import Simulation

A, B = "m.lora_A", "m.lora_B"


def client(rank: int, value: float, d: int = 3) -> dict[str, torch.Tensor]:
    return {A: torch.full((rank, d), value), B: torch.full((d, rank), 10 * value)}


def test_partition_weights_hand_computed():
    got = partition_weights([2, 4, 8], [0.5, 0.3, 0.2])
    assert [p for p, _ in got] == [(0, 2), (2, 4), (4, 8)]
    assert got[0][1] == pytest.approx([0.5, 0.3, 0.2])
    assert got[1][1] == pytest.approx([0.0, 0.6, 0.4])  # 0.3 / 0.5, 0.2 / 0.5
    assert got[2][1] == pytest.approx([0.0, 0.0, 1.0])


def test_raflora_and_hetlora_on_ranks_2_4_8():
    clients = [client(2, 1.0), client(4, 2.0), client(8, 4.0)]
    w = [0.5, 0.3, 0.2]
    ra = get_method("raflora").aggregate(clients, w, 1)[A][:, 0]
    # rows 0-1: .5*1 + .3*2 + .2*4 = 1.9 ; rows 2-3: .6*2 + .4*4 = 2.8 ; rows 4-7: 4
    assert ra.tolist() == pytest.approx([1.9, 1.9, 2.8, 2.8, 4, 4, 4, 4])
    het = get_method("hetlora").aggregate(clients, w, 1)[A][:, 0]
    # zero-padding shrinks the higher partitions: rows 2-3: .3*2 + .2*4 = 1.4 ; rows 4-7: .2*4 = 0.8
    assert het.tolist() == pytest.approx([1.9, 1.9, 1.4, 1.4, 0.8, 0.8, 0.8, 0.8])
    m = get_method("raflora")
    after = [m.download(c, m.aggregate(clients, w, 1), 1.0, 1) for c in clients]
    assert [tuple(c[A].shape) for c in after] == [(2, 3), (4, 3), (8, 3)]
    assert [tuple(c[B].shape) for c in after] == [(3, 2), (3, 4), (3, 8)]


@pytest.mark.parametrize("name", ["raflora", "hetlora"])
def test_equal_ranks_equal_fedit(name):
    g = torch.Generator().manual_seed(0)
    clients = [{A: torch.randn(4, 5, generator=g), B: torch.randn(6, 4, generator=g),
                "classifier.weight": torch.randn(2, 2, generator=g)} for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    ours = get_method(name).aggregate(clients, w, 1)
    fedit = get_method("fedit").aggregate(clients, w, 1)
    for k in fedit:
        assert torch.equal(ours[k], fedit[k])


def test_flora_stack_is_the_sum_of_weighted_products():
    g = torch.Generator().manual_seed(1)
    ranks, gammas, w = [2, 4, 8], [4.0, 2.0, 1.0], [0.5, 0.3, 0.2]
    clients = [{A: torch.randn(r, 5, generator=g, dtype=torch.float64),
                B: torch.randn(6, r, generator=g, dtype=torch.float64)} for r in ranks]
    m = get_method("flora")
    uploads = [m.upload(c, gm, 1) for c, gm in zip(clients, gammas)]
    update = m.aggregate(uploads, w, 1)
    assert update["m.stack_A"].shape == (14, 5) and update["m.stack_B"].shape == (6, 14)  # rank 2 + 4 + 8
    delta = m.merged(update)["m"]
    expected = sum(wi * gm * c[B] @ c[A] for wi, gm, c in zip(w, gammas, clients))
    torch.testing.assert_close(delta, expected, rtol=1e-12, atol=1e-12)


def test_flexlora_gives_each_client_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(2)
    ranks, gammas, w = [1, 2, 4], [8.0, 4.0, 2.0], [0.2, 0.3, 0.5]
    clients = [{A: torch.randn(r, 6, generator=g), B: torch.randn(5, r, generator=g)} for r in ranks]
    m = get_method("flexlora")
    update = m.aggregate([m.upload(c, gm, 1) for c, gm in zip(clients, gammas)], w, 1)
    dw = sum(wi * gm * (c[B].double() @ c[A].double()) for wi, gm, c in zip(w, gammas, clients))
    u, s, vh = torch.linalg.svd(dw)
    for c, r, gm in zip(clients, ranks, gammas):
        new = m.download(c, update, gm, 1)
        assert new[A].shape == (r, 6) and new[B].shape == (5, r)
        approx = gm * new[B].double() @ new[A].double()
        torch.testing.assert_close(approx, (u[:, :r] * s[:r]) @ vh[:r], rtol=1e-4, atol=1e-5)
        # Eckart-Young: the error is the energy of the dropped singular values
        assert float(torch.linalg.norm(dw - approx)) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-4)


def test_padded_entries_stay_zero_and_padding_changes_nothing():
    """Clients of ranks 2, 4, 6 trained together (padded to 6, AdamW with weight decay) keep exact zeros
    in the padding, and each equals the same client trained alone at its own rank."""
    ranks = [2, 4, 6]
    probe = tiny_llama()
    inject_adapters(probe, "qv")
    states = [truncate_state(init_adapter_state(probe, 6, torch.Generator().manual_seed(c)), r)
              for c, r in enumerate(ranks)]
    cfg = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1)
    batches = lm_batches(seed=5)
    together, _ = run_sfedlora(tiny_llama(), batches, [pad_state(s, 6) for s in states], 2.0, cfg, "instruction")
    for c, r in enumerate(ranks):
        for k, v in together[c].items():
            if k.endswith("lora_A"):
                assert torch.count_nonzero(v[r:]) == 0
            if k.endswith("lora_B"):
                assert torch.count_nonzero(v[:, r:]) == 0
        alone, _ = run_sfedlora(tiny_llama(), [batches[c]], [states[c]], 2.0, cfg, "instruction")
        for k, v in truncate_state(together[c], r).items():
            # Adam divides by sqrt(v): float32 noise in near-zero gradients moves an entry by up to
            # ~lr * 1e-2, so the bound is 1% of one step (lr = 0.01), not bit equality
            torch.testing.assert_close(v, alone[0][k], rtol=1e-4, atol=1e-4)


def test_spectrum_stats():
    delta = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    stats = spectrum_stats(delta, r_min=1)
    assert stats["energy_beyond_rmin"] == pytest.approx(5 / 14)  # (4 + 1) / (9 + 4 + 1)
    assert 1 < stats["effective_rank"] < 3


@pytest.mark.parametrize("method", ["raflora", "hetlora", "flora", "flexlora", "sfed-lora"])
def test_heterogeneous_run(method, sentiment_file, tmp_path):
    cfg = load_config(None, [f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32",
                             "data.task=classification",
                             "data.text_field=sentence", "data.label_field=sentiment", "data.partition=iid",
                             "fed.clients=3", "fed.rounds=2", "fed.local_steps=2", "train.batch_size=4",
                             "lora.ranks=[2,4,8]", f"fed.method={method}"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    sim.run()
    a_key = next(k for k in sim.states[0] if k.endswith("lora_A"))
    assert [sim.states[c][a_key].shape[0] for c in range(3)] == [2, 4, 8]
    assert all(s.keys() == sim.states[0].keys() and all(k.endswith(("lora_A", "lora_B", ".weight", ".bias"))
                                                         for k in s)
               for s in sim.states)  # no server-only entry (FLoRA's dW, FlexLoRA's SVD) stays on a client
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["rank"] == [2, 4, 8] and 0 <= records[1]["energy_beyond_rmin"] <= 1
    if method == "sfed-lora":  # gamma_i = alpha * sqrt(N / r_i)
        assert records[1]["gamma"] == pytest.approx([8 * (3 / r) ** 0.5 for r in (2, 4, 8)])


def test_overlay_and_download_keep_the_rows_an_update_lacks():
    """Under partial participation a round's update only reaches the participants' largest rank: a client
    of rank 8 that receives a rank-4 update takes its 4 rows (A) / columns (B) and keeps its own others."""
    old = {A: torch.arange(8.0).view(8, 1).repeat(1, 3), B: torch.ones(3, 8), "head.bias": torch.zeros(2)}
    new = {A: torch.full((4, 3), -1.0), B: torch.full((3, 4), 5.0), "head.bias": torch.ones(2)}
    out = overlay(old, new)
    assert out[A][:, 0].tolist() == [-1, -1, -1, -1, 4, 5, 6, 7] and out[B][0].tolist() == [5] * 4 + [1] * 4
    assert out["head.bias"].tolist() == [1, 1] and old[A][0, 0] == 0  # old itself is untouched
    assert overlay(new, old)[A][:, 0].tolist() == list(range(8))  # a wider update replaces all rows
    for name in ("raflora", "hetlora", "sfed-lora"):
        got = get_method(name).download(old, {A: new[A], "head.bias": new["head.bias"]}, 1.0, 1)
        assert got[A][:, 0].tolist() == [-1, -1, -1, -1, 4, 5, 6, 7] and torch.equal(got[B], old[B])
        small = {A: old[A][:2], B: old[B][:, :2], "head.bias": old["head.bias"]}
        assert get_method(name).download(small, new, 1.0, 1)[A].shape == (2, 3)  # cut to its own rank


@pytest.mark.parametrize("method", ["raflora", "hetlora", "sfed-lora"])
def test_heterogeneous_ranks_with_one_client_per_round(method, sentiment_file, tmp_path):
    """Ranks [2, 4, 8] and one client per round (the crash: 'start (0) + length (8) exceeds dimension size')."""
    cfg = load_config(None, [f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32",
                             "data.task=classification", "data.text_field=sentence", "data.label_field=sentiment",
                             "data.partition=iid", "fed.clients=3", "fed.clients_per_round=1", "fed.rounds=4",
                             "fed.local_steps=2", "train.batch_size=4", "lora.ranks=[2,4,8]", f"fed.method={method}"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    sim.run()
    a_key = next(k for k in sim.states[0] if k.endswith("lora_A"))
    assert [sim.states[c][a_key].shape[0] for c in range(3)] == [2, 4, 8]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["participants"]) for r in records[1:]] == [1, 1, 1, 1]
    assert len({r["participants"][0] for r in records[1:]}) > 1  # ranks differing between rounds occurred


def test_partition_n_by_hand():
    assert partition_n([2, 4, 8], 3) == pytest.approx([3.0, 2.4, 8 / (2 / 3 + 2 / 2 + 4 / 1)])
    assert partition_n([4, 4, 4], 3) == [3.0, 3.0, 3.0]  # equal ranks: the participants, as the paper's N
    assert partition_n([4, 4, 4, 4], 2) == [2.0, 2.0, 2.0, 2.0]  # 2 of 4 per round
    assert partition_n([2, 4, 8], 1) == [1.0, 1.0, 1.0]  # one client per round: nothing is averaged


@pytest.mark.parametrize(("scaling_n", "expected_n"), [("participants", [3.0, 3.0, 3.0]),
                                                      ("partition", [3.0, 2.4, 8 / (2 / 3 + 1 + 4)])])
def test_sfed_n_under_heterogeneous_ranks_is_a_recorded_choice(scaling_n, expected_n, sentiment_file, tmp_path):
    import yaml

    cfg = load_config(None, [f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32",
                             "data.task=classification", "data.text_field=sentence", "data.label_field=sentiment",
                             "data.partition=iid", "fed.clients=3", "fed.rounds=1", "fed.local_steps=1",
                             "train.batch_size=4", "lora.ranks=[2,4,8]", "fed.method=sfed-lora",
                             f"lora.scaling_n={scaling_n}"])
    Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False).run()
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resolved["scaling_n"] == scaling_n and resolved["n_scaling"] == pytest.approx(expected_n)
    assert resolved["gammas"] == pytest.approx([8 * (n / r) ** 0.5 for n, r in zip(expected_n, (2, 4, 8))])


def test_partition_n_needs_rank_partitioned_averaging(sentiment_file, tmp_path):
    from sfedlora.errors import SfedloraError

    cfg = load_config(None, [f"data.source={sentiment_file}", "data.task=classification", "fed.clients=3",
                             "lora.ranks=[2,4,8]", "fed.method=hetlora", "lora.scaling=sfed",
                             "lora.scaling_n=partition", "model.name=tiny-bert", "data.text_field=sentence",
                             "data.label_field=sentiment"])
    with pytest.raises(SfedloraError, match="rank-partitioned"):
        Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)


def test_equal_rank_methods_refuse_heterogeneous_ranks(sentiment_file, tmp_path):
    from sfedlora.errors import SfedloraError

    cfg = load_config(None, [f"data.source={sentiment_file}", "data.task=classification", "fed.clients=3",
                             "lora.ranks=[2,4,8]", "fed.method=fedit", "model.name=tiny-bert", "model.precision=fp32",
                             "data.text_field=sentence", "data.label_field=sentiment"])
    with pytest.raises(SfedloraError, match="needs equal ranks"):
        Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)


def test_report_plots_rank_collapse(sentiment_file, tmp_path):
    from sfedlora.tools.report import build_report

    for method in ("hetlora", "raflora"):
        cfg = load_config(None, [f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32",
                                 "data.task=classification", "data.text_field=sentence",
                                 "data.label_field=sentiment", "data.partition=iid", "fed.clients=2",
                                 "fed.rounds=2", "fed.local_steps=1", "train.batch_size=4", "lora.rank_set=[2,4]",
                                 f"fed.method={method}"])
        Simulation(cfg, tmp_path / "runs" / method, echo=lambda s: None, progress=False).run()
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert (tmp_path / "rep" / "energy_beyond_rmin.png").stat().st_size > 0
    assert "Rank collapse" in (tmp_path / "rep" / "report.md").read_text()


FLORA_BF16 = ["model.name=tiny-bert", "model.precision=bf16", "data.task=classification", "data.text_field=sentence",
              "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=3",
              "fed.local_steps=2", "train.batch_size=4", "lora.ranks=[2,4,8]", "fed.method=flora",
              "eval.max_examples=8"]


def _bf16_sim(sentiment_file, out, *extra):
    import warnings

    cfg = load_config(None, [f"data.source={sentiment_file}", *FLORA_BF16, *extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 emulated on an AVX2 CPU
        return Simulation(cfg, out, echo=lambda s: None, progress=False)


def test_flora_keeps_small_merged_updates_in_a_bf16_model(sentiment_file, tmp_path):
    """Ten updates of 8e-6 merged into bf16 weights of ~0.02 (a bf16 step there is ~1e-4): each adapted
    weight is W0 + their fp32 sum, nothing rounded away (before: every update was lost)."""
    sim = _bf16_sim(sentiment_file, tmp_path / "run")
    layer_name, layer = next(iter(lora_layers(sim.model).items()))
    w0 = layer.base_layer.weight.detach().float().clone()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    d_out, d_in = w0.shape  # an update whose stacked factors multiply to 8e-6 everywhere
    update = {f"{layer_name}.stack_A": torch.full((1, d_in), 8e-6), f"{layer_name}.stack_B": torch.ones(d_out, 1)}
    for _ in range(10):
        sim._merge(update)
    expected = w0 + sim.merged[layer_name]
    assert torch.equal(layer.base_layer.weight, expected)
    torch.testing.assert_close(layer.base_layer.weight - w0, torch.full(w0.shape, 8e-5), rtol=1e-3, atol=1e-9)


def test_flora_bf16_resume_equals_uninterrupted(sentiment_file, tmp_path):
    """A FLoRA run in bf16 killed after round 2's checkpoint and resumed ends bit-identical to one that ran
    straight through: the merged weights are rebuilt from W0 and the same fp32 sum."""
    straight = _bf16_sim(sentiment_file, tmp_path / "straight")
    straight.run()
    crashed = _bf16_sim(sentiment_file, tmp_path / "crashed")
    original = crashed._round

    def crash(rnd, bar):
        if rnd == 3:
            raise KeyboardInterrupt("killed in round 3")
        return original(rnd, bar)

    crashed._round = crash
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    resumed = _bf16_sim(sentiment_file, tmp_path / "crashed")
    resumed.run(resume=True)
    for a, b in zip(straight.states, resumed.states):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for (name, la), lb in zip(lora_layers(straight.model).items(), lora_layers(resumed.model).values()):
        assert la.base_layer.weight.dtype == torch.float32 and torch.equal(la.base_layer.weight, lb.base_layer.weight)
        assert torch.equal(straight.merged[name], resumed.merged[name])
    rows = [json.loads(x)["eval"]["personal"]["test"] for x in (tmp_path / "straight" / "metrics.jsonl").open()]
    again = [json.loads(x)["eval"]["personal"]["test"] for x in (tmp_path / "crashed" / "metrics.jsonl").open()]
    assert rows == again
