"""The fast paths change nothing they should not: chunked LM-head cross-entropy, the models' own logit
transforms, malloc settings. No timings are asserted here (they live in `sfedlora bench`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfedlora.client import losses
from sfedlora.runtime.allocator import tune_malloc
from sfedlora.runtime.logits import prepare_fast_logits


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
            assert prepare_fast_logits(model) is False
    else:
        assert prepare_fast_logits(model) is True
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (3, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        loss_sum, count, _ = losses.lm_terms(model, batch)
        torch.testing.assert_close(loss_sum.sum(), _full_logit_loss(model, batch), rtol=1e-5, atol=1e-5)
    assert int(count.sum()) == 3 * 6
