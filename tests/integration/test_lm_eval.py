"""`sfedlora eval --lm-eval`: an exported client under the real lm-evaluation-harness, offline, on a task of
our own (local JSON data in a task YAML): lm-eval's `hf` model loads the base with the PEFT adapter, and the
log-likelihoods it scores are the trained client's, not the base model's."""

from __future__ import annotations

import json

import pytest
import torch

import sfedlora
from sfedlora.cli import main
from sfedlora.tools.export import build_peft_model

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

pytest.importorskip("lm_eval")

DOCS = [{"question": "Repeat 3:", "choices": ["3 3", "4 4"], "answer": 0},
        {"question": "Repeat 7:", "choices": ["1 1", "7 7"], "answer": 1},
        {"question": "Repeat 5:", "choices": ["5 5", "2 2"], "answer": 0}]


@pytest.fixture
def task_dir(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "repeat.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "repeat_mc.yaml").write_text(
        "task: repeat_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'repeat.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """lm-eval's definition: log p(continuation tokens | context), the continuation being what encoding the
    whole string adds after the context's tokens."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def test_eval_runs_the_exported_adapter_under_lm_eval(tmp_path, task_dir, capsys):
    data = tmp_path / "inst.jsonl"
    data.write_text("".join(f'{{"prompt": "Repeat {i}:", "response": "{i} {i}"}}\n' for i in range(60)))
    run = tmp_path / "run"
    assert main(["run", f"data.source={data}", "data.task=instruction", "model.name=tiny-llama",
                 "model.precision=fp32", "data.partition=iid", "fed.clients=2", "fed.rounds=2", "fed.local_steps=4",
                 "train.batch_size=4", "train.lr=0.05", "eval.max_examples=4", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--lm-eval", "repeat_mc", "--include-path", str(task_dir), "--client", "1",
                 "--log-samples"]) == 0
    assert "repeat_mc: acc " in capsys.readouterr().out
    record = json.loads((run / "lm-eval" / "client-1.json").read_text())
    assert record["model_args"]["peft"].endswith("client-1/adapter")
    assert record["n_samples"]["repeat_mc"]["effective"] == 3
    samples = [json.loads(line) for line in (run / "lm-eval" / "client-1.samples.jsonl").read_text().splitlines()]
    peft_model, tok, _ = build_peft_model(run, 1)
    with peft_model.disable_adapter():
        base = [[_loglikelihood(peft_model, tok, *a) for a in s["arguments"]] for s in samples]
    ours = [[_loglikelihood(peft_model, tok, *a) for a in s["arguments"]] for s in samples]
    scored = [[r[0][0] for r in s["resps"]] for s in samples]
    # the adapter matters
    assert max(abs(o - b) for os_, bs in zip(ours, base, strict=True) for o, b in zip(os_, bs, strict=True)) > 1e-3
    for got, want in zip(scored, ours, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    accuracy = sum(max(range(2), key=lambda j: ll[j]) == s["doc"]["answer"]
                   for ll, s in zip(ours, samples, strict=True)) / 3
    assert record["results"]["repeat_mc"]["acc,none"] == pytest.approx(accuracy)
    again = sfedlora.lm_eval(run, ["repeat_mc"], client=1, include_path=task_dir)  # the Python API: the same
    assert again["repeat_mc"]["acc,none"] == record["results"]["repeat_mc"]["acc,none"]


def test_eval_refuses_classification_runs_and_unknown_tasks(sentiment_file, tmp_path, task_dir, capsys):
    run = tmp_path / "cls"
    assert main(["run", f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32",
                 "data.task=classification", "data.text_field=sentence", "data.label_field=sentiment",
                 "data.partition=iid", "fed.clients=2", "fed.rounds=1", "fed.local_steps=1", "eval.max_examples=4",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--lm-eval", "repeat_mc", "--include-path", str(task_dir)]) == 2
    assert "evaluates causal language models" in capsys.readouterr().err


def test_report_lines_show_a_stderr_only_where_lm_eval_has_one(tmp_path):
    from sfedlora.tools.harness import report_lines

    lines = report_lines({"t": {"acc,none": 1.0, "acc_stderr,none": "N/A", "acc_norm,none": 0.5,
                                "acc_norm_stderr,none": 0.25}}, tmp_path, 0)
    assert lines[0] == "t: acc 1.0000, acc_norm 0.5000 (stderr 0.2500)"
