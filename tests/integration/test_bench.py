"""`sfedlora bench` runs, its engines agree, and its ratio is the same-precision one. No timings asserted."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from sfedlora.cli import main

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


def test_bench_runs_and_agrees(capsys, tmp_path):
    code = main(["bench", "--workload", "minilm-l6", "--clients", "2", "--steps", "2", "--seq", "16",
                 "--repeats", "1", "--precision", "fp32", "--json", str(tmp_path / "b.json")])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("ratio b/a at the same precision (fp32, tokens per second): ")
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["max_adapter_diff"] < 1e-3  # same adapters: two AdamW steps, float32 noise only
    assert r["tokens_per_round"] == 2 * 2 * 2 * 16
    assert set(r["seconds"]) == {"a_fp32", "b"} and r["ratio_same_precision"] == r["ratio_fp32_peer"]
    for side in ("a_fp32", "b"):  # each side's GFLOP/s as a share of the fp32 GEMM ceiling measured here
        assert r["fraction_of_ceiling"][side] == pytest.approx(r["gflops"][side] / r["ceiling_gflops"]["fp32"])
    # the automatic group size of `sfedlora run`: on a CPU the fewest clients whose step has 512 tokens (2 x 16
    # tokens per client: both clients in one group), with G = 1 and 2 timed (faked alike per token: conftest)
    assert r["groups"] == {"train": 2, "rule": "auto", "rule_g": 2, "timing": "measured",
                           "seconds_per_token": {"1": 1 / 32, "2": 2 / 64}}
    assert "group size timed (a training step, tokens/s): G=1: 32.0, G=2: 32.0; rule G=2, took 2" in out
    e = r["evaluation"]  # scoring the round's tokens against the training round, and its share of both
    assert e["train_round_seconds"] == r["seconds"]["b"]
    assert e["per_token_vs_training"] == pytest.approx(e["score_seconds"] / e["train_round_seconds"])
    assert e["share_of_round"] == pytest.approx(e["score_seconds"] / (e["score_seconds"] + e["train_round_seconds"]))
    prof = r["profile"]  # one profiled round: every category's share, summing to 1, and the GEMMs' together
    assert sum(prof["shares"].values()) == pytest.approx(1.0) and prof["shares"]["base GEMMs"] > 0
    assert prof["gemm_share"] == pytest.approx(prof["shares"]["base GEMMs"] + prof["shares"].get("adapter matmuls", 0))
    assert any(line.startswith("GEMMs (base + adapter): ") for line in out)


def test_bench_groups_clients_as_run_does_and_still_agrees(tmp_path):
    """--group-size 1 trains the clients one group at a time: the same adapters as the peer."""
    assert main(["bench", "--workload", "tiny-bert", "--clients", "3", "--steps", "2", "--seq", "16",
                 "--repeats", "1", "--precision", "fp32", "--group-size", "1", "--json", str(tmp_path / "b.json")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["groups"] == {"train": 1, "rule": "fixed"} and r["max_adapter_diff"] < 1e-3


def test_bench_in_bf16_times_a_bf16_peer_and_reports_that_ratio_last(capsys, tmp_path):
    """(b) in bf16 against an fp32 peer is not a fair ratio (most of it is bf16 itself): the peer is timed
    with a bf16 base too, and the same-precision ratio is the last line and a --json field."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 emulated on an AVX2 CPU
        code = main(["bench", "--workload", "tiny-bert", "--clients", "2", "--steps", "2", "--seq", "16",
                     "--repeats", "1", "--precision", "bf16", "--json", str(tmp_path / "b.json")])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads((tmp_path / "b.json").read_text())
    assert set(r["seconds"]) == {"a_fp32", "a_bf16", "b"} and set(r["ceiling_gflops"]) == {"fp32", "bf16"}
    assert r["ratio_same_precision"] == pytest.approx(r["seconds"]["a_bf16"] / r["seconds"]["b"])
    assert r["ratio_fp32_peer"] == pytest.approx(r["seconds"]["a_fp32"] / r["seconds"]["b"])
    assert out[-1] == f"ratio b/a at the same precision (bf16, tokens per second): {r['ratio_same_precision']:.2f}x"
    assert any(line.startswith("ratio b/a against the fp32 peer") for line in out)
    assert r["max_adapter_diff"] < 5e-2  # against the bf16 peer: bf16 rounding, not a different computation


def test_bench_profile_prints_the_categories(capsys):
    from sfedlora.cli import main

    assert main(["bench", "--profile", "--workload", "tiny-llama", "--clients", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "self time by category" in out and "base GEMMs" in out and "largest operators" in out


@pytest.mark.parametrize("workload", ["tiny-bert", "tiny-llama"])
def test_bench_eval_times_scoring_and_decoding_against_the_peer(workload, capsys, tmp_path):
    assert main(["bench", "--eval", "--workload", workload, "--clients", "3", "--steps", "2", "--seq", "16",
                 "--repeats", "1", "--precision", "fp32", "--json", str(tmp_path / "e.json")]) == 0
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["scored_tokens"] == 3 * 2 * 2 * 16
    assert r["ratio_score"] == pytest.approx(r["score_seconds"]["a"] / r["score_seconds"]["b"])
    out = capsys.readouterr().out
    assert "scoring  (a) sequential PEFT" in out
    if workload == "tiny-llama":  # language models also decode: 3 clients x 2 prompts x 16 new tokens
        assert r["generated_tokens"] == 3 * 2 * 16 and "decoding (a) sequential PEFT" in out
    else:
        assert "ratio_generate" not in r


def test_smollm2_random_has_smollm2s_shapes():
    """The GPU benchmarks' stand-in for SmolLM2-135M (no hub there): the same architecture and parameter
    count (134,515,008, SmolLM2-135M-Instruct's), seeded random weights."""
    from sfedlora.runtime.models import load_model

    model, tok = load_model("smollm2-random", "instruction")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size, c.tie_word_embeddings) == (576, 30, 9, 3, 1536, 49152, True)
    again, _ = load_model("smollm2-random", "instruction")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, again.model.layers[0].self_attn.q_proj.weight)
