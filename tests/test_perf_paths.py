"""The fast paths change nothing they should not: chunked LM-head cross-entropy, malloc settings, and
the bench's (a)/(b) agreement. No timings are asserted here (they live in `sfedlora bench`)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from sfedlora.cli import main
from sfedlora.client import losses
from sfedlora.runtime.allocator import tune_malloc


def test_chunked_cross_entropy_equals_full(monkeypatch):
    monkeypatch.setattr(losses, "CE_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(30, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (30,), generator=g)
    chunked = losses.chunked_cross_entropy(head, hidden, target)
    grad_chunked = torch.autograd.grad(chunked.sum(), hidden)[0]
    full = F.cross_entropy(head(hidden), target, reduction="none")
    grad_full = torch.autograd.grad(full.sum(), hidden)[0]
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad_full)


def test_malloc_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SFEDLORA_MALLOC_TUNING", "0")
    assert tune_malloc() is False


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


def _tiny_causal_lm(kind: str):
    from transformers import (
        CohereConfig,
        CohereForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        GraniteConfig,
        GraniteForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "gemma2":  # a small cap, so that even a random model's logits are visibly capped
        return Gemma2ForCausalLM(Gemma2Config(**shape, head_dim=8, final_logit_softcapping=0.05)).eval()
    if kind == "cohere":
        return CohereForCausalLM(CohereConfig(**shape, logit_scale=3.0)).eval()
    if kind == "granite":
        return GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=4.0)).eval()

    class Scaled(LlamaForCausalLM):  # a transform no config names
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 5
            return out

    return Scaled(LlamaConfig(**shape)).eval()


def _full_logit_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    mask = target != -100
    return F.cross_entropy(logits[mask].float(), target[mask], reduction="sum")


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite", "unknown"])
def test_lm_loss_applies_the_models_own_logit_transform(kind):
    """Gemma-2's final softcapping, Cohere's logit scale and Granite's logits scaling are part of the loss on
    the fast path (before: skipped); a transform no config names is caught by the probe, and the model's own
    logits are used instead."""
    model = _tiny_causal_lm(kind)
    if kind == "unknown":
        with pytest.warns(UserWarning, match="full-vocabulary logits"):
            assert losses.prepare_fast_logits(model) is False
    else:
        assert losses.prepare_fast_logits(model) is True
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (3, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        loss_sum, count, _ = losses.lm_terms(model, batch)
        torch.testing.assert_close(loss_sum.sum(), _full_logit_loss(model, batch), rtol=1e-5, atol=1e-5)
    assert int(count.sum()) == 3 * 6
