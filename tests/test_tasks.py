"""Language-model tasks (instruction, math), sentence pairs, bf16 and participation, end to end on tiny
random models: the numbers are meaningless, the plumbing and the records are what is checked."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sfedlora.client.local import decode_sample
from sfedlora.client.optim import StackedOptimizer
from sfedlora.config import TrainConfig, load_config
from sfedlora.data.batching import IGNORE, encode_lm
from sfedlora.runtime.models import smollm2_tokenizer
from sfedlora.simulation import Simulation

LM = ["model.name=tiny-llama", "model.precision=fp32", "data.partition=iid", "fed.clients=2", "fed.rounds=1",
      "fed.local_steps=1",
      "train.batch_size=2", "eval.batch_size=4", "lora.rank=2", "model.max_length=48", "eval.max_examples=3"]


@pytest.fixture
def math_file(tmp_path):
    path = tmp_path / "math.jsonl"
    with path.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"question": f"What is {i} plus 2?", "worked": f"{i} + 2 = {i + 2}\n#### {i + 2}",
                                "final": str(i + 2)}) + "\n")
    return path


def run(tmp_path, *overrides):
    cfg = load_config(None, list(overrides))
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    return sim, sim.run()


def test_instruction_tuning_reports_perplexity(math_file, tmp_path):
    _, summary = run(tmp_path, f"data.source={math_file}", "data.task=instruction", "data.prompt_field=question",
                     "data.response_field=worked", *LM)
    assert summary["metric"] == "perplexity" and summary["higher_is_better"] is False
    ppl = summary["personal"]["last"]["test"]["weighted"]
    assert math.isfinite(ppl) and ppl > 1


def test_math_reports_decoding_accuracy(math_file, tmp_path):
    sim, summary = run(tmp_path, f"data.source={math_file}", "data.task=math", "data.prompt_field=question",
                       "data.response_field=worked", "data.answer_field=final", "eval.generate_examples=2",
                       "eval.max_new_tokens=3", *LM)
    assert summary["metric"] == "accuracy"
    assert 0.0 <= summary["personal"]["last"]["test"]["weighted"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # the decoded sample's size is recorded with every evaluation
        assert [row["n_decoded"] for row in r["eval"]["personal"]["test"]["clients"]] == [2, 2]
    for e in sim.encoded:  # drawn from the evaluated split, fixed at set-up: the same sample every round
        assert len(e.decode["test"]) == 2 and all(ex in e.test for ex in e.decode["test"])


def test_decoded_sample_represents_the_split_not_its_shortest_examples():
    """Splits are sorted by length for batching; the decoded sample is drawn before that (seeded), so its
    mean length is the split's, not the shortest k's (which biased accuracy up: 115 vs 177 tokens)."""
    rows = [{"prompt_ids": [0] * n, "input_ids": [0] * n} for n in range(1, 101)]  # mean length 50.5
    for seed in range(5):
        sample = decode_sample(rows, 20, seed)
        assert sample == decode_sample(rows, 20, seed) and len(sample) == 20  # seeded: same every call
        assert 35 < sum(len(ex["prompt_ids"]) for ex in sample) / 20 < 66  # the 20 shortest: 10.5
    assert len(decode_sample(rows, 0, 0)) == 100 and len(decode_sample(rows, 500, 0)) == 100  # 0 or more: all


def test_response_only_labels():
    tok = smollm2_tokenizer()
    (ex,) = encode_lm([{"prompt": "Say hi.", "response": "hi"}], tok, max_length=64)
    n_prompt = len(ex["prompt_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["labels"][-1] == tok.eos_token_id


def test_sentence_pairs_bf16_and_partial_participation(sentiment_file, tmp_path):
    sim, summary = run(
        tmp_path, f"data.source={sentiment_file}", "model.name=tiny-bert", "data.task=classification",
        "data.text_field=sentence", "data.text_pair_field=sentence", "data.label_field=sentiment",
        "data.partition=iid", "fed.clients=4", "fed.clients_per_round=2", "fed.rounds=2", "fed.local_steps=1",
        "train.batch_size=2", "model.precision=bf16", "lora.rank=4")
    assert "token_type_ids" in sim.train_ex[0][0] and 1 in sim.train_ex[0][0]["token_type_ids"]
    assert sim.resolved.n_averaged == 2 and sim.resolved.gamma == pytest.approx(8 * math.sqrt(2 / 4))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        assert len(r["participants"]) == 2
        assert sum(loss is not None for loss in r["train_loss"]) == 2
    layer = next(m for n, m in sim.model.named_modules() if n.endswith("query"))
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32


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
