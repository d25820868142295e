"""Prompt formats: Alpaca with its `### Input:` section when a record has an input (the Alpaca presets
dropped it), the tokenizer's chat template, and the loss on response tokens only."""

from __future__ import annotations

import json

import pytest

from sfedlora.config import load_config
from sfedlora.data.batching import IGNORE, encode_lm, labels_of, prompt_of
from sfedlora.data.prompts import ALPACA_INPUT, ALPACA_NO_INPUT
from sfedlora.data.sources import load_task
from sfedlora.errors import SfedloraError
from sfedlora.runtime.models import smollm2_tokenizer

ALPACA = [  # records as tatsu-lab/alpaca serves them: instruction, input (often empty), output
    {"instruction": "Summarize the following text.", "input": "The quick brown fox jumps over the lazy dog.",
     "output": "A fox jumps over a dog."},
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, exercise, sleep."},
]


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA * 12))
    return path


def alpaca_records(path):
    cfg = load_config(None, [f"data.source={path}", "data.task=instruction", "data.prompt_field=instruction",
                             "data.response_field=output", "data.input_field=input"])
    return load_task(cfg.data, seed=0).records


def test_alpaca_template_includes_the_input(alpaca_file, tok):
    records = alpaca_records(alpaca_file)
    with_input = next(r for r in records if r["input"])
    without = next(r for r in records if not r["input"])
    (ex,) = encode_lm([with_input], tok, max_length=256)
    prompt = tok.decode(prompt_of(ex))
    assert prompt.endswith(ALPACA_INPUT.format(instruction="Summarize the following text.",
                                               input="The quick brown fox jumps over the lazy dog."))
    (ex,) = encode_lm([without], tok, max_length=256)
    assert tok.decode(prompt_of(ex)).endswith(ALPACA_NO_INPUT.format(
        instruction="Give three tips for staying healthy.")) and "### Input" not in tok.decode(prompt_of(ex))
    response = [t for t in labels_of(ex).tolist() if t != IGNORE]
    assert tok.decode(response) == "Eat well, exercise, sleep." + tok.eos_token  # loss on the response only


def test_chat_template_marks_the_assistant_turn(tok):
    record = {"prompt": "Summarize the following text.", "input": "A long text.", "response": "Short."}
    (ex,) = encode_lm([record], tok, max_length=256, template="chat")
    prompt = tok.decode(prompt_of(ex))
    assert "<|im_start|>user\nSummarize the following text.\n\nA long text.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    response = [t for t in labels_of(ex).tolist() if t != IGNORE]
    assert tok.decode(response) == "Short.<|im_end|>\n"
    assert ex["input_ids"].tolist() == prompt_of(ex).tolist() + response


def test_chat_template_needs_a_tokenizer_that_has_one(tok, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", None)
    with pytest.raises(SfedloraError, match="data.template=alpaca"):
        encode_lm([{"prompt": "x", "response": "y"}], tok, max_length=32, template="chat")
    with pytest.raises(SfedloraError, match="data.template must be one of"):
        load_config(None, ["data.template=vicuna"])
