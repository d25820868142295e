"""Training options in whole runs: the schedule's step count is global across rounds and a resume
continues it exactly; accumulation and checkpointing run in both kinds of task."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import back_to_round_2

from sfedlora.cli import main
from sfedlora.runtime import rundir

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

BASE = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "fed.rounds=3", "fed.local_steps=4",
        "train.batch_size=4", "eval.max_examples=8", "train.lr=0.01", "train.lr_schedule=cosine",
        "train.warmup_steps=2"]


def resumed_from_round_2(args: list[str], out):
    """A 3-round run into `out`, taken back to its round-2 checkpoint (as if stopped there), then resumed."""
    assert main(["run", *args, "--out", str(out), "--quiet"]) == 0
    back_to_round_2(out)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    return out


def test_a_cosine_schedule_runs_over_the_whole_run_and_survives_resume(sentiment_file, tmp_path):
    args = [f"data.source={sentiment_file}", *BASE]
    assert main(["run", *args, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    straight = rundir.records(tmp_path / "a")
    # round t starts at global step 4 (t - 1) of 12: 0 (warmup), then cosine over steps 2..12
    expected = [0.0] + [0.01 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 10)) for s in (4, 8)]
    assert [r["lr"] for r in straight[1:]] == pytest.approx(expected)
    out = resumed_from_round_2(args, tmp_path / "b")
    a, b = rundir.load_adapters(tmp_path / "a")["states"], rundir.load_adapters(out)["states"]
    for x, y in zip(a, b, strict=True):
        assert all((x[k] == y[k]).all() for k in x)


@pytest.mark.parametrize(("dp", "opt"), [
    ([], "adam"),
    (["lora.init=shared", "fed.dp_clipping_norm=0.05", "fed.dp_noise_multiplier=0.5"], "adam"),
    (["lora.init=shared"], "avgm"),  # round 1 steps from the shared init (runtime.protocol.known_start)
], ids=["adam", "adam-dp", "avgm-shared"])
def test_a_server_optimizer_steps_on_the_mean_and_resumes_bit_exactly(dp, opt, sentiment_file, tmp_path):
    """fed.server_optimizer: its moments are checkpointed, so a run resumed from round 2's checkpoint ends
    with the same adapters and records as one that never stopped (with server-side DP too: its noise is drawn
    from the seed and the round); the step moves the update off the mean."""
    args = [f"data.source={sentiment_file}", *BASE[:-3], "fed.method=sfed-lora", *dp, f"fed.server_optimizer={opt}",
            "fed.server_lr=0.05"]
    assert main(["run", *args, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    straight = rundir.records(tmp_path / "a")
    assert all(r["server_opt_s"] >= 0 for r in straight[1:])
    assert rundir.read(tmp_path / "a")[1].server_lr == 0.05
    out = resumed_from_round_2(args, tmp_path / "b")
    a, b = rundir.load_adapters(tmp_path / "a")["states"], rundir.load_adapters(out)["states"]
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    resumed = rundir.records(out)
    assert [r["eval"] for r in resumed] == [r["eval"] for r in straight]
    assert [r.get("dp") for r in resumed] == [r.get("dp") for r in straight]
    if any("dp_clipping" in a for a in dp):
        assert all(r["dp"]["noise_norm"] > 0 for r in straight[1:])
    plain = tmp_path / "plain"  # the same run without the server's step: other adapters
    assert main(["run", *args[:-2], "--out", str(plain), "--quiet"]) == 0
    c = rundir.load_adapters(plain)["states"]
    assert any(not torch.equal(a[0][k], c[0][k]) for k in a[0] if k.endswith("lora_A"))
    assert "server_opt_s" not in rundir.records(plain)[1]


@pytest.mark.parametrize("source", ["sentiment", "instruction"])
def test_accumulation_and_checkpointing_in_a_run(source, sentiment_file, tmp_path):
    if source == "sentiment":
        args = [f"data.source={sentiment_file}", *BASE[:-3]]
    else:
        path = tmp_path / "inst.jsonl"
        path.write_text("".join(f'{{"prompt": "Repeat {i}", "response": "{i} {i}"}}\n' for i in range(60)))
        args = [f"data.source={path}", "data.task=instruction", "model.name=tiny-llama", "model.precision=fp32",
                "data.partition=iid", "fed.clients=2", "fed.rounds=2", "fed.local_steps=2", "train.batch_size=2",
                "eval.max_examples=4"]
    out = tmp_path / "run"
    assert main(["run", *args, "train.grad_accum_steps=2", "train.gradient_checkpointing=true", "--out", str(out),
                 "--quiet"]) == 0
    recs = rundir.records(out)
    assert all(math.isfinite(x) for r in recs[1:] for x in r["train_loss"].values())


@pytest.mark.slow
def test_a_compiled_run_trains_the_same_adapters(sentiment_file, tmp_path):
    """train.compile runs the model through torch.compile (inductor): the same adapters as eager, to float32
    noise (fused kernels round differently)."""
    args = [f"data.source={sentiment_file}", *BASE[:-3], "fed.rounds=1"]
    assert main(["run", *args, "--out", str(tmp_path / "eager"), "--quiet"]) == 0
    assert main(["run", *args, "train.compile=true", "--out", str(tmp_path / "compiled"), "--quiet"]) == 0
    assert rundir.read(tmp_path / "compiled")[0].train.compile
    eager, compiled = (rundir.load_adapters(tmp_path / d)["states"] for d in ("eager", "compiled"))
    for a, b in zip(eager, compiled, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["sfed-lora", "fedit", "flora", "flexlora"])
def test_min_clients_0_with_every_participant_excluded_keeps_the_latest_update(method, sentiment_file, tmp_path):
    """fed.min_clients=0 and a rate that makes every update non-finite: each round is recorded with no accepted
    client and every client keeps its state, as the Flower server does (before: `aggregation weights must have
    a positive sum` for sfed-lora and flora, `nothing to aggregate` for fedit and flexlora)."""
    args = [f"data.source={sentiment_file}", *BASE[:7], "fed.rounds=2", "fed.local_steps=2", "train.batch_size=4",
            "eval.max_examples=8", "fed.min_clients=0", "train.optimizer=sgd", "train.lr=1e30", f"fed.method={method}"]
    out = tmp_path / "run"
    assert main(["run", *args, "--out", str(out), "--quiet"]) == 0
    recs = rundir.records(out)
    assert [(r["round"], r.get("n_averaged", 0), len(r.get("excluded", []))) for r in recs] == [(0, 0, 0), (1, 0, 2),
                                                                                                  (2, 0, 2)]
    assert all("non-finite" in e["reason"] for r in recs[1:] for e in r["excluded"])
    assert recs[-1]["eval"]["personal"] == recs[0]["eval"]["personal"]  # nobody's model changed


def test_a_rank_above_the_adapted_modules_width_is_refused(sentiment_file, tmp_path, capsys):
    """tiny-bert's query and value are 32 x 32: rank 32 runs, 33 is refused before the run folder exists
    (before: lora.rank=100000 ran, 115 s and 1.7 GB of run folder)."""
    args = [f"data.source={sentiment_file}", *BASE[:7], "fed.rounds=1", "fed.local_steps=1", "eval.max_examples=4"]
    assert main(["run", *args, "lora.rank=32", "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    assert main(["run", *args, "lora.rank=100000", "--out", str(tmp_path / "no"), "--quiet"]) == 2
    assert ("LoRA rank 100000 exceeds what the adapted modules can use: bert.encoder.layer.0.attention.self.query "
            "is 32 x 32") in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert main(["run", *args, "lora.ranks=[4,40]", "fed.method=hetlora", "--out", str(tmp_path / "h"), "--quiet"]) == 2
