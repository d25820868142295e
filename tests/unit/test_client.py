"""A client's own pieces: the decoded sample, the kept optimizer state."""

from __future__ import annotations

import torch

from sfedlora.client import local
from sfedlora.client.optim import StackedOptimizer
from sfedlora.config import TrainConfig, load_config
from sfedlora.data.batching import grouped_chunks
from sfedlora.data.encode import Encoded, decode_sample


def test_decoded_sample_represents_the_split_not_its_shortest_examples():
    """Splits are sorted by length for batching; the decoded sample is drawn before that (seeded), so its
    mean length is the split's, not the shortest k's (which biased accuracy up: 115 vs 177 tokens)."""
    rows = [{"n_prompt": n, "input_ids": [0] * n} for n in range(1, 101)]  # mean prompt length 50.5
    for seed in range(5):
        sample = decode_sample(rows, 20, seed)
        assert sample == decode_sample(rows, 20, seed) and len(sample) == 20  # seeded: same every call
        assert 35 < sum(ex["n_prompt"] for ex in sample) / 20 < 66  # the 20 shortest: 10.5
    assert len(decode_sample(rows, 0, 0)) == 100 and len(decode_sample(rows, 500, 0)) == 100  # 0 or more: all


def test_kept_optimizer_state_continues_exactly():
    """Splitting AdamW state per client and stacking it back (optimizer_state=keep) changes nothing."""
    cfg = TrainConfig(optimizer="adamw", lr=0.1)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 3, generator=g) for _ in range(4)]
    straight = torch.nn.Parameter(torch.zeros(2, 3))
    opt = StackedOptimizer(cfg)
    for grad in grads:
        straight.grad = grad.clone()
        opt.step({"p": straight})
    split = torch.nn.Parameter(torch.zeros(2, 3))
    opt1 = StackedOptimizer(cfg)
    for grad in grads[:2]:
        split.grad = grad.clone()
        opt1.step({"p": split})
    opt2 = StackedOptimizer(cfg)
    opt2.load_client_states([opt1.client_state(0), opt1.client_state(1)])
    for grad in grads[2:]:
        split.grad = grad.clone()
        opt2.step({"p": split})
    torch.testing.assert_close(split, straight, rtol=0, atol=0)
    fresh = StackedOptimizer(cfg)
    fresh.load_client_states([opt1.client_state(0), {}])  # client 1 starts over: step 0, zero moments
    assert fresh.state["p"]["step"].tolist() == [2.0, 0.0]


def test_evaluation_batches_are_equal_and_fill_only_where_a_client_ran_out():
    """12 rows at 8 a batch: two batches of 6 (not 8 and 4 with 4 filler rows); a client with fewer rows gets
    filler rows of weight 0 so that every client has the same rows per batch."""
    a = [{"i": i} for i in range(12)]
    b = [{"i": 100 + i} for i in range(5)]
    batches = list(grouped_chunks([a, b], 8))
    assert [len(ex) for ex, _ in batches] == [12, 12]  # 2 clients x 6 rows
    (ex0, w0), (ex1, w1) = batches
    assert [e["i"] for e in ex0[:6]] == list(range(6)) and [e["i"] for e in ex1[:6]] == list(range(6, 12))
    assert w0 == [1.0] * 6 + [1.0] * 5 + [0.0] and w1 == [1.0] * 6 + [0.0] * 6
    assert sum(w0 + w1) == 17  # every real row once
    assert [len(ex) for ex, _ in grouped_chunks([a], 16)] == [12]
    assert [len(ex) for ex, _ in grouped_chunks([a[:9]], 4)] == [3, 3, 3]
    assert list(grouped_chunks([[], []], 4)) == []


def test_math_decodes_both_splits_of_a_client_in_one_pass(monkeypatch):
    """decode_clients: one decoding call for every split of every installed client, each client's rows sorted by
    prompt length, then the accuracy of each split by hand."""
    row = lambda n, tag: {"n_prompt": n, "tag": tag}
    enc = [Encoded([], [], [], {"val": [row(5, "v0"), row(9, "v1")],
                                "test": [row(2, "t0"), row(7, "t1"), row(8, "t2")]}),
           Encoded([], [], [], {"val": [row(4, "w0")], "test": [row(1, "u0")]})]
    right = {"v0", "t0", "t2", "u0"}
    calls = []

    def fake(model, tok, per_client, bs, max_new, device):
        calls.append([[r["tag"] for r in rows] for rows in per_client])
        return [[r["tag"] in right for r in rows] for rows in per_client]

    monkeypatch.setattr(local, "correct_answers", fake)
    cfg = load_config(None, ["eval.samples=0"])
    out = local.decode_clients(None, None, "math", cfg, enc, torch.device("cpu"))
    assert calls == [[["t0", "v0", "t1", "t2", "v1"], ["u0", "w0"]]]
    assert out["val"] == [{"accuracy": 0.5, "n_decoded": 2}, {"accuracy": 0.0, "n_decoded": 1}]
    assert out["test"] == [{"accuracy": 2 / 3, "n_decoded": 3}, {"accuracy": 1.0, "n_decoded": 1}]
