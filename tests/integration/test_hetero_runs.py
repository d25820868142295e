"""Whole heterogeneous-rank runs: every method, partial participation, the recorded N, FLoRA's exact merge
in bf16 and its resume, the rank-collapse report."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import killed_in_round

from sfedlora.adapters.inject import lora_layers, set_merged
from sfedlora.client.step import merge_sum
from sfedlora.config import load_config
from sfedlora.simulation import Simulation

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


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
    assert records[1]["rank"] == {"0": 2, "1": 4, "2": 8} and 0 <= records[1]["energy_beyond_rmin"] <= 1
    if method == "sfed-lora":  # gamma_i = alpha * sqrt(N / r_i)
        assert list(records[1]["gamma"].values()) == pytest.approx([8 * (3 / r) ** 0.5 for r in (2, 4, 8)])


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
    assert resolved["gammas"] == pytest.approx([8 * (n / r) ** 0.5 for n, r in zip(expected_n, (2, 4, 8), strict=True)])


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
    merged: dict = {}
    for _ in range(10):
        merged = merge_sum(sim.method, merged, update)  # as both runners merge a round
        set_merged(sim.model, merged)
    expected = w0 + merged[layer_name]
    assert torch.equal(layer.base_layer.weight, expected)
    torch.testing.assert_close(layer.base_layer.weight - w0, torch.full(w0.shape, 8e-5), rtol=1e-3, atol=1e-9)


def test_flora_bf16_resume_equals_uninterrupted(sentiment_file, tmp_path):
    """A FLoRA run in bf16 killed after round 2's checkpoint and resumed ends bit-identical to one that ran
    straight through: the merged weights are rebuilt from W0 and the same fp32 sum."""
    straight = _bf16_sim(sentiment_file, tmp_path / "straight")
    straight.run()
    killed_in_round(_bf16_sim(sentiment_file, tmp_path / "crashed"), 3)
    resumed = _bf16_sim(sentiment_file, tmp_path / "crashed")
    resumed.run(resume=True)
    for a, b in zip(straight.states, resumed.states, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for (name, la), lb in zip(lora_layers(straight.model).items(), lora_layers(resumed.model).values(), strict=True):
        assert la.base_layer.weight.dtype == torch.float32 and torch.equal(la.base_layer.weight, lb.base_layer.weight)
        assert torch.equal(straight.merged[name], resumed.merged[name])
    rows = [json.loads(x)["eval"]["personal"]["test"] for x in (tmp_path / "straight" / "metrics.jsonl").open()]
    again = [json.loads(x)["eval"]["personal"]["test"] for x in (tmp_path / "crashed" / "metrics.jsonl").open()]
    assert rows == again
