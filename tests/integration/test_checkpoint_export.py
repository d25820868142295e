"""Crash and resume, exports that plain PEFT loads, configs that never raise a traceback, and clients
with non-finite updates left out of aggregation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import after_local_training
from hypothesis import given, settings
from hypothesis import strategies as st

from sfedlora.adapters.inject import load_group
from sfedlora.cli import main
from sfedlora.config import load_config
from sfedlora.core.scaling import scaling
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir
from sfedlora.simulation import Simulation
from sfedlora.tools.export import build_peft_model, peft_alpha

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

BASE = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=3", "train.batch_size=4", "lora.rank=4",
        "eval.max_examples=8"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(sentiment_file, tmp_path):
    args = [f"data.source={sentiment_file}", *BASE, "fed.rounds=8", "fed.local_steps=25", "train.optimizer_state=keep",
            "model.attention=sdpa", "train.group_size=3"]  # the subprocess's run would measure these (conftest)
    straight = tmp_path / "straight"
    assert main(["run", *args, "--out", str(straight), "--quiet"]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sfedlora.cli", "run", *args, "--out", str(killed), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait until round 3 is written, then kill inside round 4
            metrics = killed / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "summary.json").exists() and (killed / "checkpoint.safetensors").exists()
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0
    a = rundir.load_adapters(straight)["states"]
    b = rundir.load_adapters(killed)["states"]
    for sa, sb in zip(a, b, strict=True):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    rounds = [json.loads(line)["round"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(9))
    assert main(["run", "--resume", str(killed)]) == 2  # finished: nothing to resume


@pytest.mark.parametrize(("method", "extra"), [("sfed-lora", []), ("fedsa-rslora", []),
                                               ("fedit", ["lora.scaling=custom", "lora.scaling_a=1"]),
                                               ("sfed-lora", ["lora.scaling=adaptive"])])
def test_export_loads_in_plain_peft_with_the_same_logits(method, extra, sentiment_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from sfedlora.runtime.models import load_model

    run = tmp_path / "run"
    cfg = load_config(None, [f"data.source={sentiment_file}", *BASE, "fed.rounds=2", "fed.local_steps=3",
                             f"fed.method={method}", *extra])
    sim = Simulation(cfg, run, echo=lambda s: None, progress=False)
    sim.run()
    assert main(["export", str(run), "--client", "1", "--out", str(tmp_path / "exp")]) == 0
    ids = torch.randint(1, 1000, (3, 12))
    load_group(sim.model, [sim.states[1]], [sim.server.gamma(1)])  # adaptive: one gamma per module
    with torch.no_grad():
        ours = sim.model(input_ids=ids).logits
        base, _ = load_model("tiny-bert", "classification", 3)
        peft = PeftModel.from_pretrained(base, str(tmp_path / "exp" / "adapter")).eval()
        merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "exp" / "merged")).eval()
        torch.testing.assert_close(peft(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, ours, rtol=1e-4, atol=1e-4)
        with peft.disable_adapter():  # the trained adapter and head really change the output
            assert not torch.allclose(peft(input_ids=ids).logits, ours, atol=1e-4)
    _, _, info = build_peft_model(run, 1)
    assert info["gamma"] == pytest.approx(sim.server.gamma(1))
    config = json.loads((tmp_path / "exp" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-bert"
    assert sorted(config["modules_to_save"]) == sorted(set(config["modules_to_save"]))  # each once
    merged_config = json.loads((tmp_path / "exp" / "merged" / "config.json").read_text())
    assert merged_config["id2label"] == {"0": "bad", "1": "good", "2": "meh"}
    card = (tmp_path / "exp" / "adapter" / "README.md").read_text()
    assert f"| method | `{method}` |" in card and "| best on validation |" in card
    assert "query, value in layers 0-1 (4 modules)" in card and "num_labels=3" in card


def test_peft_alpha_reproduces_gamma():
    for rule in ("lora", "rslora", "sfed"):
        gamma = scaling(rule, 8.0, 64, 5)
        lora_alpha, rs = peft_alpha(rule, gamma, 64, 8.0, 5)
        assert (lora_alpha / (64**0.5 if rs else 64)) == pytest.approx(gamma)
    assert peft_alpha("sfed", 0.0, 64, 8.0, 5) == pytest.approx((8.0 * 5**0.5, True))


KEYS = ["lora.rank", "lora.alpha", "lora.scaling", "lora.targets", "lora.ranks", "fed.method", "fed.clients",
        "fed.rounds", "train.lr", "train.betas", "train.grad_clip", "data.partition", "data.val_fraction", "seed",
        "eval.every", "model.precision", "nonsense", "lora", "fed.clients_per_round", "checkpoint_every"]
VALUES = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.booleans(), st.none(), st.lists(st.integers(-3, 70), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_random_configs_never_raise_a_traceback(pairs):
    import yaml

    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in pairs]
    try:
        load_config(None, overrides)
    except SfedloraError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_config_files_never_raise_a_traceback(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except SfedloraError:
        pass


def test_non_finite_client_is_excluded(sentiment_file, tmp_path, monkeypatch):
    cfg = load_config(None, [f"data.source={sentiment_file}", *BASE, "fed.rounds=1", "fed.local_steps=1",
                             "fed.method=fedsa-lora"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    before = [dict(s) for s in sim.states]
    a_key = next(k for k in sim.states[0] if k.endswith("lora_A"))

    def poisoned(rnd, c, held, stats):
        if c == 1:
            held.adapters[a_key] = torch.full_like(held.adapters[a_key], float("nan"))
        return held, stats

    after_local_training(monkeypatch, sim, poisoned)
    sim.run()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["excluded"] == [{"client": 1, "reason": f"non-finite values in {a_key}"}]
    assert record["participants"] == [0, 2] and record["n_averaged"] == 2
    b_key = a_key.replace("lora_A", "lora_B")
    assert torch.equal(sim.states[1][b_key], before[1][b_key])  # client 1 went back to its pre-round B
    assert all(bool(torch.isfinite(v).all()) for s in sim.states for v in s.values())


@pytest.mark.parametrize(("clip", "hint"), [(None, "Lower train.lr or enable train.grad_clip"),
                                            (1.0, r"Lower train.lr \(train.grad_clip = 1.0 is on already\)")])
def test_too_few_finite_clients_stop_the_run(clip, hint, sentiment_file, tmp_path, monkeypatch):
    cfg = load_config(None, [f"data.source={sentiment_file}", *BASE, "fed.rounds=1", "fed.local_steps=1",
                             "fed.min_clients=3", f"train.grad_clip={'null' if clip is None else clip}"])
    sim = Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False)
    after_local_training(monkeypatch, sim, lambda rnd, c, held, stats: (
        held, {**stats, "loss": float("inf")} if c == 0 else stats))
    with pytest.raises(SfedloraError, match=r"round 1: only 2 acceptable uploads \(fed.min_clients = 3\): client 0: "
                                            r"non-finite training loss inf. " + hint):
        sim.run()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_head_without_bias_stays_without_one_and_exports(sentiment_file, tmp_path):
    """LLaMA's classification head `score` has no bias: none is added (before: a trained bias the export
    could not place, KeyError), and the export reproduces the run's logits in plain PEFT."""
    from peft import PeftModel

    from sfedlora.runtime.models import load_model

    run = tmp_path / "run"
    cfg = load_config(None, [f"data.source={sentiment_file}", *BASE, "model.name=tiny-llama", "fed.rounds=1",
                             "fed.local_steps=2"])
    sim = Simulation(cfg, run, echo=lambda s: None, progress=False)
    sim.run()
    assert "score.weight" in sim.states[0] and not any(k.endswith("score.bias") for k in sim.states[0])
    assert main(["export", str(run), "--client", "0", "--out", str(tmp_path / "exp"), "--no-merged"]) == 0
    ids = torch.randint(1, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    load_group(sim.model, [sim.states[0]], [sim.resolved.gammas[0]])
    with torch.no_grad():
        ours = sim.model(input_ids=ids).logits
        base, _ = load_model("tiny-llama", "classification", 3)
        peft = PeftModel.from_pretrained(base, str(tmp_path / "exp" / "adapter")).eval()
        torch.testing.assert_close(peft(input_ids=ids).logits, ours, rtol=1e-5, atol=1e-5)
