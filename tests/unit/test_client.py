"""A client's own pieces: the decoded sample, the kept optimizer state."""

from __future__ import annotations

import torch

from sfedlora.client.optim import StackedOptimizer
from sfedlora.config import TrainConfig
from sfedlora.data.encode import decode_sample


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
