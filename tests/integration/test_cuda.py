"""Whole runs on CUDA: marked `cuda`, skipped where torch sees no CUDA device (CI, CPU machines), run by
benchmarks/device_check.sh on a GPU. What the CPU suite proves on the CPU, here on the GPU: runs resolve
bf16 where the GPU has it, a killed-and-resumed run is bit-identical, a 4-bit base trains, evaluation,
generation samples and export work with the model on the device. (The batched step against sequential
PEFT on CUDA: tests/unit/test_batched_equals_peft.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import back_to_round_2

from sfedlora.cli import main
from sfedlora.runtime import rundir
from sfedlora.runtime.resolve import resolve_device, resolve_precision

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _instruction_file(tmp_path):
    path = tmp_path / "inst.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Repeat {i}:", "response": f"{i} {i}"}) + "\n" for i in range(60)))
    return path


def _args(path, *extra):
    return [f"data.source={path}", "data.task=instruction", "model.name=tiny-llama", "data.partition=iid",
            "fed.clients=3", "fed.rounds=2", "fed.local_steps=3", "train.batch_size=4", "eval.max_examples=4",
            "eval.sample_tokens=4", *extra]


def test_auto_device_and_precision_on_a_gpu():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_precision("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


@pytest.fixture
def deterministic(monkeypatch):
    """torch's deterministic algorithms (some CUDA kernels, attention's backward among them, add atomically)
    and a deterministic cuBLAS workspace, for bit-for-bit comparisons; off again afterwards."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_cuda_run_is_bit_identical(precision, tmp_path, deterministic):
    """Killed during round 3 (back to round 2's checkpoint), resumed: the same adapters as a run never stopped."""
    path = _instruction_file(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for out in (whole, cut):
        assert main(["run", *_args(path, f"model.precision={precision}", "fed.rounds=3"), "--out", str(out),
                     "--quiet"]) == 0
    back_to_round_2(cut)
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    for x, y in zip(rundir.load_adapters(whole)["states"], rundir.load_adapters(cut)["states"], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_4bit_base_trains_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    assert main(["run", *_args(_instruction_file(tmp_path), "model.quantization=4bit"), "--out", str(out),
                 "--quiet"]) == 0
    assert all(x > 0 for r in rundir.records(out)[1:] for x in r["grad_norm_A"].values())
    assert rundir.read(out)[1].device == "cuda"


def test_export_of_a_cuda_run_loads_in_peft(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *_args(_instruction_file(tmp_path), "model.precision=fp32"), "--out", str(out),
                 "--quiet"]) == 0
    assert main(["export", str(out), "--client", "1", "--out", str(tmp_path / "e")]) == 0
    meta = json.loads((tmp_path / "e" / "adapter" / "sfedlora.json").read_text())
    assert meta["client"] == 1 and (tmp_path / "e" / "merged" / "config.json").exists()
    assert (out / "samples.jsonl").exists()
