"""A client's splits tokenised for the model: training rows, evaluation rows sorted by length, the seeded sample of
math problems decoded for accuracy, and the fixed prompts whose completions each evaluated round shows."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfedlora.config import RunConfig
from sfedlora.data.batching import encode_classification, encode_lm, prompt_of
from sfedlora.data.partition import ClientData
from sfedlora.data.prompts import render

MAX_SAMPLE_CHARS = 20_000  # a generation sample's reference is cut to this (Flower nodes send them)


@dataclass
class Encoded:
    """One client's tokenised splits; evaluation splits sorted by length (batches then pad little).
    Math: `decode[split]` is the seeded sample of that split decoded for accuracy, the same every round.
    Instruction and math: `samples` are the fixed prompts decoded every evaluated round (eval.samples)."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    decode: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def decode_sample(rows: Sequence[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """A seeded uniform sample of k rows (all rows if k is 0 or at least their number), drawn before any
    sorting, so that it represents the split; returned sorted by prompt length for batching."""
    chosen = list(rows) if not k or k >= len(rows) else random.Random(seed).sample(list(rows), k)
    return sorted(chosen, key=lambda e: e["n_prompt"])


def encode(clients: Mapping[int, ClientData], task: str, tok: Any, cfg: RunConfig) -> dict[int, Encoded]:
    """Each client's splits, tokenised; evaluation capped at eval.max_examples per split (the split's own
    seeded order), and for math the decoded sample of eval.generate_examples per split. Every client's rows
    go through the tokenizer in one call: a call costs about half a millisecond beyond its text, which was
    33 s of set-up at 10,000 clients of 4 records (a call per client and split); rows are encoded one by one
    within a call, so the result is the same."""
    L, template = cfg.model.max_length, cfg.data.template
    enc = (lambda rows: encode_classification(rows, tok, L)) if task == "classification" else (
        lambda rows: encode_lm(rows, tok, L, template))
    cap, shown = cfg.eval.max_examples or None, 0 if task == "classification" else cfg.eval.samples
    parts = {c: (d.train, d.val[:cap], d.test[:cap], d.test[:shown]) for c, d in clients.items()}
    rows = iter(enc([r for part in parts.values() for split in part for r in split]))
    return {c: _assembled([[next(rows) for _ in split] for split in part], part[3], tok, cfg, task, c)
            for c, part in parts.items()}


def _assembled(splits: list[list[dict[str, Any]]], shown: list[dict[str, Any]], tok: Any, cfg: RunConfig,
               task: str, c: int) -> Encoded:
    """Client c's Encoded from its encoded (train, val, test, shown) rows and the shown rows as read."""
    train, val, test, shown_rows = splits
    by_len = lambda rows: sorted(rows, key=lambda e: len(e["input_ids"]))
    decode = {} if task != "math" else {
        split: decode_sample(rows, cfg.eval.generate_examples, cfg.seed * 1000003 + 2 * c + i)
        for i, (split, rows) in enumerate((("val", val), ("test", test)))}
    # the prompt as decoded from (its tokens: cut from the left where the example was), the reference response
    samples = [{**ex, "prompt": tok.decode(prompt_of(ex)), "reference": reference[:MAX_SAMPLE_CHARS]}
               for ex, (_, reference) in zip(shown_rows, (render(r, cfg.data.template, tok) for r in shown),
                                             strict=True)]
    return Encoded(train, by_len(val), by_len(test), decode, samples)


def pooled(encoded: Sequence[Encoded]) -> Encoded:
    """The clients' evaluation splits pooled (the global model's evaluation), sorted as a client's are."""
    val, test = (sorted((ex for e in encoded for ex in getattr(e, split)), key=lambda ex: len(ex["input_ids"]))
                 for split in ("val", "test"))
    decode = {split: sorted((ex for e in encoded for ex in e.decode.get(split, [])), key=lambda ex: ex["n_prompt"])
              for split in ("val", "test")}
    return Encoded([], val, test, decode)
