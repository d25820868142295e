"""The group size G by hand: memory caps, the device rule, the saved-tensor count, validation."""

from __future__ import annotations

import pytest
import torch

from sfedlora.bench.memory import tensor_bytes
from sfedlora.config import load_config
from sfedlora.data.encode import Encoded
from sfedlora.errors import SfedloraError
from sfedlora.simulation.grouping import (
    busy_group,
    candidates,
    decode_rows,
    eval_group,
    measured_group,
    memory_caps,
    saved_activation_bytes,
    time_groups,
)

REAL_TIME_GROUPS = time_groups  # the conftest fixture patches grouping.time_groups for every test; this is the real one


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


def test_candidate_group_sizes_by_hand():
    # CPU: powers of two within the cap up to MAX_PROBE_TOKENS (1024) tokens a step, with the rule's G
    assert candidates("cpu", 2, cap=10, tokens_per_client=256) == [1, 2, 4]
    assert candidates("cpu", 1, cap=10, tokens_per_client=320) == [1, 2]
    assert candidates("cpu", 3, cap=3, tokens_per_client=16) == [1, 2, 3]
    assert candidates("cpu", 1, cap=1, tokens_per_client=16) == [1]
    assert candidates("cuda", 40, cap=40, tokens_per_client=256) == [10, 20, 40]


def test_the_fastest_group_per_token_beats_the_rule_by_the_margin_and_is_cached(monkeypatch):
    from sfedlora.simulation import grouping

    timed = []

    def seconds(step_for, sizes):  # per step; per token (256 tokens a client): G 1: 1/256, 2: 0.75/256, 4: 1/256
        timed.append(sizes)
        return {1: 1.0, 2: 1.5, 4: 4.0}
    monkeypatch.setattr(grouping, "time_groups", seconds)
    key = {"model": "m", "rows": 2}
    g, per_token, how, when = measured_group(1, [1, 2, 4], 256, lambda g: lambda: None, key)
    assert (g, how) == (2, "measured") and when and timed == [[1, 2, 4]]  # 25% faster per token than the rule's 1
    assert per_token == {"1": 1 / 256, "2": 1.5 / 512, "4": 4 / 1024}
    assert measured_group(1, [1, 2, 4], 256, lambda g: lambda: None, key) == (2, per_token, "cached", when)
    assert len(timed) == 1
    monkeypatch.setattr(grouping, "time_groups", lambda step_for, sizes: {1: 1.0, 2: 1.9, 4: 4.0})
    assert measured_group(1, [1, 2, 4], 256, lambda g: lambda: None, None)[0] == 1  # 5%: a near-tie keeps the rule


def test_group_timing_warms_up_once_times_the_sizes_in_turn_and_keeps_the_random_streams():
    calls = []

    def step_for(g):
        def step():
            calls.append(g)
            torch.rand(3)  # a step draws random numbers (dropout): the timing must not move the streams
        return step
    state = torch.get_rng_state()
    seconds = REAL_TIME_GROUPS(step_for, [1, 2, 4])
    # a warm-up at the largest, then REPEATS = 2 rounds timing every size in turn
    assert calls == [4, 1, 2, 4, 1, 2, 4] and set(seconds) == {1, 2, 4} and all(v >= 0 for v in seconds.values())
    assert torch.equal(torch.get_rng_state(), state)


def test_a_run_records_the_measured_group_size(tmp_path, monkeypatch):
    from sfedlora.simulation import Simulation, grouping

    # real steps of every size (the probe's groups), timed as if each took 1 s: the larger G is faster per token
    monkeypatch.setattr(grouping, "time_groups",
                        lambda step_for, sizes: dict.fromkeys(REAL_TIME_GROUPS(step_for, sizes), 1.0))
    cfg = load_config(None, ["model.name=tiny-llama", "model.precision=fp32", "data.task=instruction",
                             "data.source=reasoning-instructions", "data.max_examples=48", "data.partition=iid",
                             "fed.clients=4", "fed.rounds=1", "fed.local_steps=1", "train.batch_size=2",
                             "lora.rank=4", "model.max_length=32", "eval.max_examples=2", "eval.samples=0",
                             "model.attention=sdpa"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    plan = sim.resolved.groups
    sizes = [int(g) for g in plan.timed["seconds_per_token"]]
    assert plan.rule == "auto" and plan.timed["timing"] == "measured" and plan.train == max(sizes) > 1
    assert sizes == candidates("cpu", plan.timed["rule_g"], plan.cap, plan.row_tokens * 2)
    sim.run()
    assert "seconds_per_token" in (tmp_path / "run" / "config.yaml").read_text()
