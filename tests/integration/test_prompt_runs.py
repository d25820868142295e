"""The prompt format is recorded in the run and beside the export."""

from __future__ import annotations

import json

import pytest
import yaml

from sfedlora.cli import main
from sfedlora.data.prompts import ALPACA_INPUT

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

ALPACA = [  # records as tatsu-lab/alpaca serves them: instruction, input (often empty), output
    {"instruction": "Summarize the following text.", "input": "The quick brown fox jumps over the lazy dog.",
     "output": "A fox jumps over a dog."},
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "Eat well, exercise, sleep."},
]


@pytest.fixture
def alpaca_file(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA * 12))
    return path


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_template_is_recorded_in_the_run_and_the_export(template, alpaca_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", f"data.source={alpaca_file}", "data.task=instruction", "data.prompt_field=instruction",
                 "data.response_field=output", "model.name=tiny-llama", "model.precision=fp32", "data.partition=iid",
                 "fed.clients=2", "fed.rounds=1", "fed.local_steps=1", "train.batch_size=2", "lora.rank=2",
                 "eval.max_examples=2", f"data.template={template}", "--out", str(out), "--quiet"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["template"] == template
    assert main(["export", str(out), "--client", "0", "--out", str(tmp_path / "exp")]) == 0
    for folder in ("adapter", "merged"):
        info = json.loads((tmp_path / "exp" / folder / "sfedlora.json").read_text())
        assert info["prompt_format"]["template"] == template and info["method"] == "sfed-lora"
    if template == "alpaca":
        assert info["prompt_format"]["prompt_input"] == ALPACA_INPUT
