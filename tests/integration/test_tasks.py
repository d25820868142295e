"""Language-model tasks (instruction, math), sentence pairs, bf16 and participation, end to end on tiny
random models: the numbers are meaningless, the plumbing and the records are what is checked."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from sfedlora.config import load_config
from sfedlora.data.batching import IGNORE, encode_lm, labels_of, prompt_of
from sfedlora.runtime.models import smollm2_tokenizer
from sfedlora.runtime.resolve import GroupPlan
from sfedlora.simulation import Simulation

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

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
        assert len(e.decode["test"]) == 2 and all(any(ex is t for t in e.test) for ex in e.decode["test"])


def test_response_only_labels():
    tok = smollm2_tokenizer()
    (ex,) = encode_lm([{"prompt": "Say hi.", "response": "hi"}], tok, max_length=64)
    n_prompt, labels, ids = ex["n_prompt"], labels_of(ex).tolist(), ex["input_ids"].tolist()
    assert ex["input_ids"].dtype == torch.int32 and prompt_of(ex).tolist() == ids[:n_prompt]
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and labels[-1] == tok.eos_token_id


def test_sentence_pairs_bf16_and_partial_participation(sentiment_file, tmp_path):
    sim, summary = run(
        tmp_path, f"data.source={sentiment_file}", "model.name=tiny-bert", "data.task=classification",
        "data.text_field=sentence", "data.text_pair_field=sentence", "data.label_field=sentiment",
        "data.partition=iid", "fed.clients=4", "fed.clients_per_round=2", "fed.rounds=2", "fed.local_steps=1",
        "train.batch_size=2", "model.precision=bf16", "lora.rank=4")
    first = sim.encoded[0].train[0]
    assert "token_type_ids" in first and 1 in first["token_type_ids"]
    assert sim.resolved.n_averaged == 2 and sim.resolved.gamma == pytest.approx(8 * math.sqrt(2 / 4))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        assert len(r["participants"]) == 2
        assert len(r["train_loss"]) == 2 and None not in r["train_loss"].values()  # the round's 2 participants
    layer = next(m for n, m in sim.model.named_modules() if n.endswith("query"))
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32


def test_labels_are_a_copy_whatever_the_token_dtype():
    ex = {"input_ids": torch.tensor([5, 6, 7, 8]), "n_prompt": 2}  # int64: .long() alone would alias
    assert labels_of(ex).tolist() == [IGNORE, IGNORE, 7, 8] and ex["input_ids"].tolist() == [5, 6, 7, 8]


def test_decoding_in_larger_groups_than_scoring_gives_the_same_evaluation(math_file, tmp_path):
    """The in-process runner scores in evaluation groups and decodes (math accuracy, samples) in decoding groups
    where the plan makes those larger: the record is the one a single pass of one client at a time gives."""
    cfg = load_config(None, [f"data.source={math_file}", "data.task=math", "data.prompt_field=question",
                             "data.response_field=worked", "data.answer_field=final", "eval.generate_examples=2",
                             "eval.max_new_tokens=4", "eval.samples=1", "eval.sample_tokens=3", *LM, "fed.clients=3"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    evaluations = []
    for decode in (1, 3):  # one pass of one client; scored one at a time, then the three decoded together
        sim.resolved = replace(sim.resolved, groups=GroupPlan(train=1, eval=1, rule="fixed", decode=decode))
        evaluations.append(sim._evaluate())
    (one, one_samples), (two, two_samples) = evaluations
    assert one == two and one_samples == two_samples
    for split in ("val", "test"):
        assert [row["n_decoded"] for row in two["personal"][split]["clients"]] == [len(e.decode[split])
                                                                                   for e in sim.encoded]
    assert [row["n_decoded"] for row in two["personal"]["test"]["clients"]] == [2, 2, 2]
    assert set(two_samples) == {0, 1, 2} and all(len(s) == 1 for s in two_samples.values())
