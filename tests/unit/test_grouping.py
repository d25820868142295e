"""The group size G by hand: memory caps, the device rule, the saved-tensor count, validation."""

from __future__ import annotations

import pytest
import torch

from sfedlora.bench.memory import tensor_bytes
from sfedlora.config import load_config
from sfedlora.data.encode import Encoded
from sfedlora.errors import SfedloraError
from sfedlora.simulation.grouping import busy_group, decode_rows, eval_group, memory_caps, saved_activation_bytes


def test_memory_caps_by_hand():
    # rows_fit = 100_000 // (2.0 * 1000) = 50; training 50 // 8 = 6 clients, evaluation 50 // 16 = 3
    # decoding: as evaluation unless a client decodes fewer rows (2: 50 // 2 = 25 clients)
    assert memory_caps(1000, 100_000, 8, 16, 100) == (6, 3, 3)
    assert memory_caps(1000, 100_000, 8, 16, 100, decode_rows=2) == (6, 3, 25)
    assert memory_caps(1000, 100_000, 8, 16, 4) == (4, 3, 3)  # never more than the clients there are
    assert memory_caps(1000, 100_000, 8, 16, 4, safety=1.0) == (4, 4, 4)  # 100 rows: 12 and 6, clamped to 4
    assert memory_caps(10**9, 1000, 8, 16, 50) == (1, 1, 1)  # not even one client fits: one at a time


def test_decode_rows_by_hand():
    """One client's rows in a decoding pass: its math sample of both splits together, or its sample prompts,
    at most an evaluation batch; none decoded: 0."""
    row = {"n_prompt": 3}
    math = Encoded([], [], [], {"val": [row], "test": [row, row]})
    samples = Encoded([], [], [], {}, [row] * 5)
    assert decode_rows([math], 16) == 3
    assert decode_rows([math, samples], 16) == 5
    assert decode_rows([math, samples], 4) == 4
    assert decode_rows([Encoded([], [row], [row])], 16) == 0


def test_busy_group_by_hand():
    # CPU: 512 tokens per step; rows of 16 tokens x 8 per client = 128 tokens -> 4 clients
    assert busy_group("cpu", 16, 8, cap=10) == 4
    assert busy_group("cpu", 16, 8, cap=3) == 3  # within the memory cap
    assert busy_group("cpu", 100, 8, cap=10) == 1  # 800 tokens: one client already fills a step
    assert busy_group("cpu", 20, 8, cap=10) == 4  # 160 per client: ceil(512 / 160) = 4
    assert busy_group("cuda", 16, 8, cap=10) == 10  # a GPU takes all that fits


def test_eval_group_matches_training_rows_within_its_cap():
    assert eval_group(3, 8, 16, 10) == 2  # 24 training rows -> ceil(24 / 16) = 2 clients of 16 rows
    assert eval_group(3, 8, 16, 1) == 1
    assert eval_group(1, 8, 16, 10) == 1


def test_saved_activation_bytes_counts_saved_tensors_not_parameters():
    lin = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    # mm saves x (5 x 4 floats = 80 bytes) for the weight's gradient; square saves its input (5 x 3 = 60);
    # the weight itself is a parameter and not counted
    assert saved_activation_bytes(lin, lambda: lin(x).square().sum()) == 140
    assert lin.weight.grad is None


def test_group_size_validation():
    with pytest.raises(SfedloraError, match="train.group_size"):
        load_config(None, ["train.group_size=big"])
    with pytest.raises(SfedloraError, match="train.group_size"):
        load_config(None, ["train.group_size=-1"])
    with pytest.raises(SfedloraError, match="train.group_memory"):
        load_config(None, ["train.group_memory=0"])
    assert load_config(None, ["train.group_size=0"]).train.group_size == 0


def test_tensor_bytes_nested():
    assert tensor_bytes([{"a": torch.zeros(3)}, {"b": {"m": torch.zeros(2, dtype=torch.float64)}}]) == 12 + 16
