"""The group size G: its memory caps, the timing rule, the activation count, the plan a run records, and
the memory account of `sfedlora bench --memory` (hand-computed sizes on tiny-bert)."""

from __future__ import annotations

import pytest
import torch
import yaml

from sfedlora.bench.memory import memory_account, tensor_bytes
from sfedlora.config import load_config
from sfedlora.errors import SfedloraError
from sfedlora.runtime.grouping import GroupPlan, busy_group, eval_group, memory_caps, saved_activation_bytes
from sfedlora.simulation import Simulation

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=1", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false"]


def test_memory_caps_by_hand():
    # rows_fit = 100_000 // (2.0 * 1000) = 50; training 50 // 8 = 6 clients, evaluation 50 // 16 = 3
    assert memory_caps(1000, 100_000, 8, 16, 100) == (6, 3)
    assert memory_caps(1000, 100_000, 8, 16, 4) == (4, 3)  # never more than the clients there are
    assert memory_caps(1000, 100_000, 8, 16, 4, safety=1.0) == (4, 4)  # 100 rows: 12 and 6, clamped to 4
    assert memory_caps(10**9, 1000, 8, 16, 50) == (1, 1)  # not even one client fits: one at a time


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


def test_auto_plan_is_recorded_and_leaves_the_random_stream_alone(sentiment_file, tmp_path):
    """tiny-bert rows are short (< 16 tokens) and 4 per client, so a CPU step of 512 tokens takes all 3."""
    def build(*extra):
        cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, *extra])
        return Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)

    fixed = build("train.group_size=1")
    rng_fixed = torch.get_rng_state()
    auto = build()
    assert torch.equal(torch.get_rng_state(), rng_fixed)  # the probes ran under a forked RNG
    plan = auto.groups
    assert plan.rule == "auto" and plan.cap == 3 and 0 < plan.row_tokens < 16
    assert plan.train == 3 and plan.eval == 1  # eval: ceil(3 x 4 / 16) = 1 client of 16 rows per pass
    assert plan.bytes_per_row > 0 and 0 < plan.budget_bytes <= plan.free_bytes
    assert fixed.groups == GroupPlan(train=1, eval=1, rule="fixed")
    auto.run()
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]["groups"]
    assert GroupPlan(**recorded) == plan  # what --resume reads back


def test_memory_account_terms_by_hand(sentiment_file):
    from sfedlora.bench.memory import memory_overrides

    overrides = memory_overrides(3, 4, 1, 4, 32) + [f"data.source={sentiment_file}", *TINY[:5]]
    r = memory_account(None, overrides, echo=lambda s: None)
    # tiny-bert: hidden 32, 2 layers, q and v adapted: 4 x (A 4x32 + B 32x4) = 1024 floats; head: pooler
    # 32x32 + 32 and classifier 3x32 + 3 (the file's 3 labels); 4 bytes a float
    assert r["n_labels"] == 3
    per_client = 4 * (1024 + 32 * 32 + 32 + 3 * 32 + 3)
    assert r["per_client"]["adapter"] == per_client
    assert r["terms"]["adapters"] == 3 * per_client
    # AdamW: m and v for each of the 12 tensors (8 adapter factors, 4 head tensors) plus a float step count each
    assert r["terms"]["optimizer_state"] == 3 * (2 * per_client + 12 * 4)
    assert r["terms"]["group_activations"] == r["groups"]["train"] * 4 * r["bytes_per_row"]
    assert r["predicted"] == sum(r["terms"].values())
    assert r["measured_growth"] > 0


def test_tensor_bytes_nested():
    assert tensor_bytes([{"a": torch.zeros(3)}, {"b": {"m": torch.zeros(2, dtype=torch.float64)}}]) == 12 + 16
