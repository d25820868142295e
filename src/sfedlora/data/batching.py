"""Tokenisation and client-major batching.

An example is a dict of int32 token tensors (4 bytes a token; Python lists of ints took about 9x that, over
a GiB at 100 clients of long examples): classification {input_ids, [token_type_ids], label}; language
modelling {input_ids, n_prompt, [answer]} in a prompt format (data.prompts), the first n_prompt tokens
being the prompt (what decoding starts from); collate puts labels = -100 on them (loss on response tokens
only). `truncated` says whether the example was cut to max_length.
A group batch stacks b examples of client 0, then b of client 1, ... (client-major), padded to one
length, with `weight` 0 on filler rows used to even out clients that ran out of examples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from sfedlora.data.prompts import check_template, render

IGNORE = -100


def _tokens(ids: Sequence[int]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int32)


def encode_classification(records: Sequence[dict[str, Any]], tok: Any, max_length: int) -> list[dict[str, Any]]:
    texts = [r["text"] for r in records]
    pairs = [r["text_pair"] for r in records] if records and "text_pair" in records[0] else None
    enc = tok(texts, pairs, truncation=True, max_length=max_length)
    full = tok(texts, pairs, truncation=False, verbose=False)["input_ids"] if records else []
    out = []
    for i, r in enumerate(records):
        ex = {"input_ids": _tokens(enc["input_ids"][i]), "label": int(r["label"]),
              "truncated": len(full[i]) > max_length}
        if "token_type_ids" in enc:
            ex["token_type_ids"] = _tokens(enc["token_type_ids"][i])
        out.append(ex)
    return out


def encode_lm(records: Sequence[dict[str, Any]], tok: Any, max_length: int,
              template: str = "alpaca") -> list[dict[str, Any]]:
    """Prompt + response in the prompt format `template` (data.prompts), labels on the response only; the
    prompt is cut from the left and the response from the right so that at least half of max_length stays
    for the response when both are long."""
    check_template(template, tok)
    if not records:  # a split of size 0 (data.val_fraction=0); the tokenizer cannot take an empty batch
        return []
    texts = [render(r, template, tok) for r in records]
    # alpaca: the tokenizer's own special tokens (BOS) and an EOS after the response; chat: the template
    # already holds every special token, its end-of-turn mark included
    prompts = tok([p for p, _ in texts], add_special_tokens=template == "alpaca")["input_ids"]
    responses = tok([a for _, a in texts], add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id] if template == "alpaca" else []
    out = []
    for r, p, a in zip(records, prompts, responses, strict=True):
        a = list(a) + eos
        truncated = len(p) + len(a) > max_length
        if truncated:
            a = a[: max(max_length // 2, max_length - len(p))]
            p = p[-(max_length - len(a)):] if max_length > len(a) else []
        ids = _tokens(list(p) + a)
        ex = {"input_ids": ids, "n_prompt": len(p), "truncated": truncated}
        if "answer" in r:
            ex["answer"] = r["answer"]
        out.append(ex)
    return out


def prompt_of(example: dict[str, Any]) -> torch.Tensor:
    """A language-modelling example's prompt tokens (a view, no copy)."""
    return example["input_ids"][:example["n_prompt"]]


def labels_of(example: dict[str, Any]) -> torch.Tensor:
    """A language-modelling example's labels: its tokens, with IGNORE on the prompt's (loss on the response)."""
    labels = example["input_ids"].to(torch.long, copy=True)
    labels[:example["n_prompt"]] = IGNORE
    return labels


def collate(examples: Sequence[dict[str, Any]], pad_id: int, weights: Sequence[float] | None = None,
            left_pad: bool = False, prompts: bool = False) -> dict[str, torch.Tensor]:
    """Pad a list of examples (already in client-major order) into tensors; with `prompts` only their
    prompt tokens (language modelling: what decoding continues)."""
    tokens = [prompt_of(e) if prompts else e["input_ids"] for e in examples]
    length = max(len(t) for t in tokens)
    fills = {"input_ids": pad_id, "attention_mask": 0}
    if "token_type_ids" in examples[0] and not prompts:
        fills["token_type_ids"] = 0
    if "n_prompt" in examples[0] and not prompts:
        fills["labels"] = IGNORE
    batch = {k: torch.full((len(examples), length), fill, dtype=torch.long) for k, fill in fills.items()}
    for i, (e, t) in enumerate(zip(examples, tokens, strict=True)):
        n = len(t)
        at = slice(length - n, length) if left_pad else slice(0, n)
        batch["input_ids"][i, at] = t
        batch["attention_mask"][i, at] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][i, at] = e["token_type_ids"]
        if "labels" in batch:
            batch["labels"][i, at] = labels_of(e)
    if "label" in examples[0]:
        batch["label"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    batch["weight"] = torch.tensor(list(weights) if weights is not None else [1.0] * len(examples))
    return batch


class ClientSampler:
    """Endless seeded shuffles of one client's training examples; the position survives across rounds."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.pos = 0
        self.epoch = 0

    def take(self, b: int) -> list[int]:
        out: list[int] = []
        while len(out) < b:
            if self.pos >= len(self.order):
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
                self.pos = 0
                self.epoch += 1
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def saved(self) -> list[Any]:
        """Where the order stands, as plain values (a state file keeps them: runtime.statefile)."""
        return [self.rng.getstate(), self.order, self.pos, self.epoch]

    def restore(self, saved: Sequence[Any]) -> ClientSampler:
        """Continue from `saved` (what saved() returned); returns self."""
        rng_state, self.order, self.pos, self.epoch = saved
        self.rng.setstate(rng_state)
        return self


def grouped_chunks(per_client: Sequence[Sequence[dict[str, Any]]],
                   batch_size: int) -> Iterator[tuple[list[dict[str, Any]], list[float]]]:
    """Evaluation batches over a group: as few batches as `batch_size` rows per client allows, of equal size
    (12 rows at 8 a batch: two of 6, not 8 and 4 with 4 filler rows computed for nothing); each client
    contributes that many rows per batch, filler rows (weight 0) where it has run out. Yields (examples in
    client-major order, weights)."""
    longest = max((len(x) for x in per_client), default=0)
    steps = -(-longest // batch_size)
    size = -(-longest // steps) if steps else 0
    any_example = next((rows[0] for rows in per_client if rows), None)
    for s in range(steps):
        examples: list[dict[str, Any]] = []
        weights: list[float] = []
        for rows in per_client:
            chunk = list(rows[s * size:(s + 1) * size])
            real = len(chunk)
            filler = rows[0] if rows else any_example
            assert filler is not None  # steps > 0 only when some client has rows
            chunk += [filler] * (size - real)
            examples += chunk
            weights += [1.0] * real + [0.0] * (size - real)
        yield examples, weights
