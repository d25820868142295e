"""The automatic group plan on a real set-up, and the memory account's terms."""

from __future__ import annotations

import torch
import yaml

from sfedlora.bench.memory import memory_account
from sfedlora.config import load_config
from sfedlora.runtime.resolve import GroupPlan
from sfedlora.simulation import Simulation

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "fed.rounds=1", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false"]


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
    assert fixed.groups == GroupPlan(train=1, eval=1, rule="fixed", decode=1)
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


def test_memory_account_of_a_disk_store_counts_the_participants(sentiment_file):
    from sfedlora.bench.memory import memory_overrides, report_lines

    overrides = memory_overrides(8, 4, 1, 4, 32, per_round=2, rounds=3, examples=80) + [
        f"data.source={sentiment_file}", *TINY[:5], "fed.client_store=disk"]
    r = memory_account(None, overrides, echo=lambda s: None)
    per_client = 4 * (1024 + 32 * 32 + 32 + 3 * 32 + 3)  # as above
    assert r["client_store"] == "disk" and r["clients_in_memory"] == 2
    assert r["terms"]["adapters"] == 2 * per_client and r["per_client"]["adapter"] == per_client
    assert r["terms"]["optimizer_state"] == 2 * (2 * per_client + 12 * 4)
    assert 2 <= r["clients_on_disk"] <= 6 and r["disk_bytes"] > r["clients_on_disk"] * 3 * per_client
    assert len(r["round_wall_s"]) == 3 and r["round_s"] == sum(r["round_wall_s"][1:]) / 2
    assert any(line.startswith("client store: disk; 8 clients on disk") for line in report_lines(r))
