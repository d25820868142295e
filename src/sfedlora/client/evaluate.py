"""Evaluation of a group of installed clients, each on its own examples, in batched forwards.

Metrics: loss (mean per example for classification, per response token for LM), accuracy and macro-F1
with the confusion counts it comes from (classification; math accuracy: exact match of the final answer of
a greedy decoding, sfedlora.client.answers, counted by correct_answers), perplexity = exp(token loss) for LM
tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sfedlora.client.answers import same_answer
from sfedlora.client.losses import classification_terms, lm_terms
from sfedlora.core.metrics import macro_f1, perplexity
from sfedlora.data.batching import collate, grouped_chunks


def _to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def evaluate_group(model: Any, per_client: Sequence[Sequence[dict[str, Any]]], task: str, pad_id: int,
                   batch_size: int, device: torch.device | str) -> list[dict[str, float]]:
    """Loss and accuracy or perplexity for each installed client on its own list of examples (eval mode:
    no dropout anywhere, so the same model gives the same numbers every time)."""
    model.eval()
    c = len(per_client)
    sums = torch.zeros(c, 4, dtype=torch.float64)  # loss sum, loss count, correct, examples
    k = max(2, int(getattr(model.config, "num_labels", 2)))
    confusion = torch.zeros(c, k * k, dtype=torch.float64)  # rows: true label, columns: predicted
    terms = classification_terms if task == "classification" else lm_terms
    for examples, weights in grouped_chunks(per_client, batch_size):
        batch = _to(collate(examples, pad_id, weights), device)
        loss, count, third = terms(model, batch)
        w = batch["weight"].double()
        if task == "classification":
            correct = (third == batch["label"]).double()
            cell = (batch["label"] * k + third).view(c, -1).cpu()
            confusion += torch.zeros(c, k * k, dtype=torch.float64).scatter_add_(1, cell, w.view(c, -1).cpu())
        else:
            correct = third
        stacked = torch.stack([loss.double() * w, count.double() * w, correct.double() * w, w], 1)  # (rows, 4)
        sums += stacked.view(c, -1, 4).sum(1).cpu()
    out = []
    for s, conf in zip(sums.tolist(), confusion.view(c, k, k).round().long().tolist(), strict=True):
        loss = s[0] / max(s[1], 1)
        row: dict[str, Any] = {"loss": loss, "n": int(s[3])}
        if task == "classification":
            row["accuracy"] = s[2] / max(s[3], 1)
            row["macro_f1"] = macro_f1(conf)
            row["confusion"] = conf
        else:
            row["tokens"] = int(s[1])
            row["perplexity"] = perplexity(loss)
        out.append(row)
    return out


@torch.inference_mode()
def greedy_texts(model: Any, tok: Any, per_client: Sequence[Sequence[dict[str, Any]]], batch_size: int,
                 max_new_tokens: int, device: torch.device | str, min_new_tokens: int = 0) -> list[list[str]]:
    """Each installed client's greedy continuation of each of its examples' prompts (left padded, eval
    mode, batched across the group), in the order given; `min_new_tokens` forbids stopping earlier
    (benchmarks that count tokens)."""
    model.eval()
    c = len(per_client)
    out: list[list[str]] = [[] for _ in range(c)]
    for examples, weights in grouped_chunks(per_client, batch_size):
        batch = _to(collate(examples, tok.pad_token_id, weights, left_pad=True, prompts=True), device)
        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        per = len(examples) // c
        for i, (w, text) in enumerate(zip(weights, texts, strict=True)):
            if w > 0:
                out[i // per].append(text)
    return out


def correct_answers(model: Any, tok: Any, per_client: Sequence[Sequence[dict[str, Any]]], batch_size: int,
                    max_new_tokens: int, device: torch.device | str) -> list[list[bool]]:
    """Math, per installed client and example (in the order given): does the final answer of its greedy decoding
    equal the example's (client.answers)?"""
    texts = greedy_texts(model, tok, per_client, batch_size, max_new_tokens, device)
    return [[same_answer(t, ex["answer"]) for t, ex in zip(ts, rows, strict=True)]
            for ts, rows in zip(texts, per_client, strict=True)]


def generate_samples(model: Any, tok: Any, per_client: Sequence[Sequence[dict[str, Any]]], batch_size: int,
                     max_new_tokens: int, device: torch.device | str) -> list[list[dict[str, str]]]:
    """Each installed client's greedy completion of its fixed sample prompts, beside the prompt and the
    reference response: what samples.jsonl shows per round."""
    texts = greedy_texts(model, tok, per_client, batch_size, max_new_tokens, device)
    return [[{"prompt": ex["prompt"], "reference": ex["reference"], "completion": t}
             for t, ex in zip(ts, rows, strict=True)] for ts, rows in zip(texts, per_client, strict=True)]
