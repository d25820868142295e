"""Shared fixtures: tiny random models built from configs (no downloads), small data files."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

# tests/flower needs the `flower` extra: without flwr it is not collected (test_without_flower.py covers sfedlora
# itself without it). Here, not in a conftest of its own: two conftest modules would shadow each other's imports.
collect_ignore_glob = [] if importlib.util.find_spec("flwr") else ["flower/*"]


@pytest.fixture(autouse=True)
def set_up_timings_equal(monkeypatch, tmp_path_factory):
    """Set-up times each attention implementation (model.attention=auto) and a few group sizes
    (train.group_size=auto), and timings are not reproducible: in tests every implementation takes the same time
    and every group size the same time per token, so auto keeps sdpa and the rule's group size, and two runs of a
    test choose alike. tests/unit/test_attention.py and test_grouping.py time for real and fake other timings;
    each test keeps its timings in a cache folder of its own. A run in a subprocess measures for real (and caches
    in its SFEDLORA_CACHE): tests that compare one with an in-process run pin model.attention and the group size."""
    from sfedlora.runtime import attention, timings
    from sfedlora.simulation import grouping

    monkeypatch.setattr(attention, "measure", lambda model, step, names: dict.fromkeys(names, 1.0))
    monkeypatch.setattr(grouping, "time_groups", lambda step_for, sizes: {g: float(g) for g in sizes})
    folder = tmp_path_factory.mktemp("timings")  # faked timings never reach a real cache
    monkeypatch.setattr(timings, "cache_folder", lambda: folder)


def lm_batch(g: torch.Generator, rows: int, seq: int = 10, padded_row: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens for a causal LM: the first 4 (the prompt) and the padding out of the loss, the last 3
    tokens of one row padded."""
    ids = torch.randint(1, 64, (rows, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[padded_row, -3:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture
def sentiment_file(tmp_path: Path) -> Path:
    """A local JSONL classification set: 3 labels, word choice tied to the label."""
    rng = random.Random(0)
    words = {"good": ["great", "lovely", "fine"], "bad": ["awful", "poor", "broken"], "meh": ["okay", "average"]}
    path = tmp_path / "reviews.jsonl"
    with path.open("w") as f:
        for i in range(240):
            label = ["good", "bad", "meh"][i % 3]
            text = " ".join(rng.choice(words[label]) for _ in range(5)) + f" item {i}"
            f.write(json.dumps({"sentence": text, "sentiment": label}) + "\n")
    return path


def back_to_round_2(out: Path) -> None:
    """A finished 3-round run folder taken back to its round-2 checkpoint, as if stopped during round 3: its
    summary, final adapters and last checkpoint gone, the previous checkpoint in its place, records up to round 2."""
    from sfedlora.runtime import checkpoint, rundir

    for name in (rundir.SUMMARY, rundir.ADAPTERS, checkpoint.NAME):
        (out / name).unlink()
    os.replace(out / checkpoint.PREVIOUS, out / checkpoint.NAME)
    lines = (out / rundir.METRICS).read_text().splitlines()
    (out / rundir.METRICS).write_text("\n".join(lines[:3]) + "\n")


def killed_in_round(sim, rnd: int) -> None:
    """Run a Simulation until it is killed as round `rnd` starts (after the checkpoint of the round before)."""
    original = sim.exchange

    def crash(r, selected, evaluate):
        if r == rnd and selected:
            raise KeyboardInterrupt(f"killed in round {rnd}")
        return original(r, selected, evaluate)

    sim.exchange = crash
    with pytest.raises(KeyboardInterrupt):
        sim.run()


def after_local_training(monkeypatch, sim, change) -> None:
    """In `sim`, each client's result of local training passes through change(rnd, c, held, stats) -> (held, stats)
    before the client step checks and uploads it (client.step.train wrapped)."""
    from sfedlora.client import step

    original = step.train

    def train(engine, rnd, held, states, gammas, encoded, on_step=None):
        out = original(engine, rnd, held, states, gammas, encoded, on_step)
        if engine is not sim.setup:
            return out
        clients = [next(i for i, e in enumerate(sim.encoded) if e is x) for x in encoded]
        return [change(rnd, c, h, stats) for c, (h, stats) in zip(clients, out, strict=True)]

    monkeypatch.setattr(step, "train", train)


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[int]:
    """Another process holds `folder`'s run lock while the block runs; yields its PID."""
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom sfedlora.runtime import lock\n"
                               f"with lock.hold({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=30)
