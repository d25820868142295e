"""`sfedlora bench` runs, its engines agree, and its ratio is the same-precision one. No timings asserted."""

from __future__ import annotations

import json
import warnings

import pytest

from sfedlora.cli import main


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
