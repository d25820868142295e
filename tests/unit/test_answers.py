"""Math scoring: the gold answer goes through the same extraction as the prediction, so GSM8K's `answer`
field (a worked solution ending in '#### 72') scores exactly; tested on real GSM8K records."""

from __future__ import annotations

import json

import pytest
import torch

from sfedlora.client.answers import extract_answer, same_answer
from sfedlora.client.evaluate import correct_answers
from sfedlora.config import load_config
from sfedlora.data.batching import encode_lm, prompt_of
from sfedlora.data.sources import load_task
from sfedlora.runtime.models import smollm2_tokenizer

# The first two records of GSM8K's train split (openai/gsm8k, config `main`), as the hub serves them.
GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]


@pytest.mark.parametrize(("text", "expected"), [
    (GSM8K[0]["answer"], "72"),
    (GSM8K[1]["answer"], "10"),
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("the total is 1,234 apples.", "1234"),
    ("#### -5", "-5"),
    ("It costs $2.50 in all.", "2.50"),
    ("#### 1,000\nand more text 3", "1000"),
    ("no number here", "no number here"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_same_answer_compares_extracted_numbers():
    assert same_answer("The answer is 72.", GSM8K[0]["answer"])  # a whole GSM8K solution as the gold
    assert same_answer("#### 72", "72") and same_answer("72.0", "#### 72") and same_answer("1,000", "1000")
    assert same_answer("#### -5", "-5") and not same_answer("#### 5", "-5")
    assert not same_answer("#### 71", GSM8K[0]["answer"]) and not same_answer("", "72")


class Oracle:
    """A 'model' whose greedy decoding is the gold worked solution of each prompt: accuracy must be 1."""

    def __init__(self, tok, responses: dict[tuple[int, ...], str]) -> None:
        self.tok, self.responses = tok, responses

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = tuple(i for i, m in zip(ids, mask, strict=True) if m)
            new = self.tok(self.responses[prompt], add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(ids + new + [self.tok.pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_gsm8k_records_score_as_correct_when_the_solution_is_reproduced(tmp_path):
    """The paper presets' mapping (prompt_field question, response_field answer, answer_field answer) on
    real GSM8K records: decoding the gold solution scores 1.0 (before the fix: 0, every round tied)."""
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    cfg = load_config(None, [f"data.source={path}", "data.task=math", "data.prompt_field=question",
                             "data.response_field=answer", "data.answer_field=answer"])
    records = load_task(cfg.data, seed=0).records
    tok = smollm2_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    examples = encode_lm(records, tok, max_length=256)
    oracle = Oracle(tok, {tuple(prompt_of(ex).tolist()): r["response"]
                          for ex, r in zip(examples, records, strict=True)})
    right = correct_answers(oracle, tok, [examples], batch_size=2, max_new_tokens=96, device="cpu")
    assert right == [[True] * len(GSM8K)]
    wrong = Oracle(tok, {k: v.replace("#### ", "#### 1") for k, v in oracle.responses.items()})
    wrongly = correct_answers(wrong, tok, [examples], batch_size=2, max_new_tokens=96, device="cpu")
    assert wrongly == [[False] * len(GSM8K)]
