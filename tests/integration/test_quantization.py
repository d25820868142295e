"""A quantised frozen base (model.quantization, QLoRA through bitsandbytes' real CPU backend): the body's
linear layers are replaced, the heads are not, batched training still equals training alone, and a run
trains, on both of bitsandbytes' CPU paths: its AVX512-BF16 probe (`bitsandbytes.nn.modules.has_avx512bf16`,
read when a Linear4bit is made) is faked on, so the path that repacks 4-bit weights for inference is covered
on any CPU (the packed kernel itself is registered only where the real probe says yes, and is never run)."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_batch, tiny_llama

from sfedlora.adapters.inject import init_adapter_state, inject_adapters, load_group, read_group
from sfedlora.cli import main
from sfedlora.client.optim import StackedOptimizer
from sfedlora.client.train import train_group
from sfedlora.config import TrainConfig, load_config
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir
from sfedlora.runtime.logits import prepare_fast_logits
from sfedlora.runtime.quantize import is_quantized, quantize
from sfedlora.runtime.resolve import check

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(params=[False, True], ids=["avx2-probe", "avx512bf16-probe"])
def bnb_probe(request, monkeypatch):
    """bitsandbytes' CPU probe, as each kind of CPU answers it."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: request.param)
    return request.param


def packed(model) -> list[str]:
    """The layers whose 4-bit weight is in bitsandbytes' CPU inference format (which has no backward)."""
    return [n for n, m in model.named_modules()
            if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def quantised_llama(mode: str):
    """tiny-llama with a `mode` base and one client's adapters on q, v (B nonzero, so A gets a gradient too)."""
    model = tiny_llama()
    quantize(model, mode)
    inject_adapters(model, "qv", head=False)
    state = init_adapter_state(model, 4, torch.Generator().manual_seed(0))
    load_group(model, [{k: torch.full_like(v, 0.05) if k.endswith("lora_B") else v for k, v in state.items()}], [2.0])
    return model


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_no_4bit_layer_is_repacked_by_an_evaluation_on_either_cpu_path(monkeypatch):
    # Prepare: the same 4-bit model and adapters, made with the probe answering no and yes
    g = torch.Generator().manual_seed(5)
    batch = lm_batch(g, 2)

    def evaluate_then_train(probe: bool):
        monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: probe)
        model = quantised_llama("4bit")
        model.eval()  # the frozen base is always in eval mode: an evaluation is where bitsandbytes repacks
        with torch.no_grad():
            evaluated = model(input_ids=batch["input_ids"]).logits
        logits = model(input_ids=batch["input_ids"]).logits
        logits.square().mean().backward()
        return evaluated, logits.detach(), grads_of(model), packed(model)

    # Execute
    e0, l0, g0, p0 = evaluate_then_train(False)
    e1, l1, g1, p1 = evaluate_then_train(True)
    # Assert: nothing repacked, and the forward and every adapter gradient as on a CPU without AVX512-BF16
    assert p0 == [] and p1 == []
    torch.testing.assert_close(e1, e0, rtol=0, atol=0)
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    assert g1.keys() == g0.keys() and any("lora_A" in k for k in g0) and any("lora_B" in k for k in g0)
    for k in g0:
        assert g0[k].abs().sum() > 0, k
        torch.testing.assert_close(g1[k], g0[k], rtol=0, atol=0)


@pytest.mark.parametrize(("mode", "kind", "tolerance"), [("4bit", "Linear4bit", 0.25), ("8bit", "Linear8bitLt", 0.05)])
def test_the_body_is_quantised_and_the_heads_are_not(mode, kind, tolerance):
    model, reference = tiny_llama(), tiny_llama()
    assert quantize(model, mode) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks
    block = model.model.layers[0]
    assert type(block.self_attn.q_proj).__name__ == kind and is_quantized(block.mlp.up_proj)
    assert type(model.lm_head) is torch.nn.Linear
    ids = torch.randint(1, 64, (2, 12))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert (ours - theirs).abs().max() / theirs.abs().max() < tolerance  # quantisation error, not garbage


def test_batched_clients_on_a_4bit_base_equal_each_client_alone():
    g = torch.Generator().manual_seed(3)
    batches = [lm_batch(g, 4) for _ in range(2)]  # 2 clients x 2 rows, 2 steps
    cfg = TrainConfig(optimizer="adamw", lr=0.01)

    def train(clients, rows):
        model = tiny_llama()
        quantize(model, "4bit")
        prepare_fast_logits(model)
        inject_adapters(model, "qv", head=False)
        states = [init_adapter_state(model, 4, torch.Generator().manual_seed(c)) for c in clients]
        for s in states:
            for k in s:
                if k.endswith("lora_B"):
                    s[k] = torch.full_like(s[k], 0.05)
        load_group(model, states, [2.0] * len(clients))
        feed = iter([{k: v[rows] for k, v in b.items()} | {"weight": torch.ones(len(rows))} for b in batches])
        train_group(model, lambda: next(feed), StackedOptimizer(cfg), frozenset({"A", "B"}), 2, cfg, "instruction")
        return read_group(model)

    together = train([0, 1], [0, 1, 2, 3])
    for c, rows in ((0, [0, 1]), (1, [2, 3])):
        (alone,) = train([c], rows)
        for k in alone:
            torch.testing.assert_close(together[c][k], alone[k], rtol=1e-5, atol=1e-6)


def test_a_4bit_run_trains_and_flora_is_refused(tmp_path, bnb_probe):
    path = tmp_path / "inst.jsonl"
    path.write_text("".join(f'{{"prompt": "Repeat {i}", "response": "{i} {i}"}}\n' for i in range(60)))
    args = [f"data.source={path}", "data.task=instruction", "model.name=tiny-llama", "model.precision=fp32",
            "data.partition=iid", "fed.clients=2", "fed.rounds=2", "fed.local_steps=3", "train.batch_size=2",
            "eval.max_examples=4", "model.quantization=4bit"]
    out = tmp_path / "run"
    assert main(["run", *args, "--out", str(out), "--quiet"]) == 0
    recs = rundir.records(out)
    assert all(x > 0 for r in recs[1:] for x in r["grad_norm_A"].values())
    assert recs[-1]["eval"]["personal"]["val"]["loss"] != recs[0]["eval"]["personal"]["val"]["loss"]
    assert rundir.read(out)[0].model.quantization == "4bit"
    with pytest.raises(SfedloraError, match="quantised base"):
        check(load_config(None, [*args, "fed.method=flora"]))


def test_8bit_layers_train_alike_with_the_int8_kernel_of_avx512_cpus():
    # bitsandbytes registers torch._int_mm as its CPU int8 matmul only where torch reports AVX512 at import
    # (backends/cpu/ops.py); here that registration is made by hand, so the AVX512 path runs on any CPU
    g = torch.Generator().manual_seed(7)
    batch = lm_batch(g, 2)

    def forward_backward():
        model = quantised_llama("8bit")
        logits = model(input_ids=batch["input_ids"]).logits
        logits.square().mean().backward()
        return logits.detach(), grads_of(model)

    calls = []

    def int_mm(a, b):  # what bitsandbytes 0.50 registers on AVX512 CPUs
        calls.append(a.shape)
        return torch._int_mm(a.reshape(-1, a.shape[-1]), b.t()).reshape(*a.shape[:-1], b.shape[0])

    default_logits, default_grads = forward_backward()
    lib = torch.library.Library("bitsandbytes", "IMPL")
    try:
        lib.impl("int8_linear_matmul", int_mm, "CPU")
        avx512_logits, avx512_grads = forward_backward()
    finally:
        lib._destroy()
    assert calls  # the AVX512 kernel did run
    torch.testing.assert_close(avx512_logits, default_logits, rtol=0, atol=0)
    assert avx512_grads.keys() == default_grads.keys() and any("lora_A" in k for k in default_grads)
    for k in default_grads:
        torch.testing.assert_close(avx512_grads[k], default_grads[k], rtol=0, atol=0)
