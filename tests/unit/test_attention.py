"""The attention implementation chosen by measurement (runtime.attention): the rule by hand, the real timing, the
record, and runs under each implementation agreeing to float32 rounding."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from sfedlora.config import load_config
from sfedlora.runtime import attention, timings
from sfedlora.runtime.attention import choose, current, measure, resolve_attention, supported, use
from sfedlora.runtime.timings import machine, situation
from sfedlora.simulation import Simulation

REAL_MEASURE = measure  # the conftest fixture patches attention.measure for every test; this is the real one


def test_choose_by_hand():
    assert choose({"sdpa": 1.0, "eager": 0.85}) == "eager"  # 15% faster: beats the 10% margin
    assert choose({"sdpa": 1.0, "eager": 0.95}) == "sdpa"  # 5%: a near-tie keeps the default
    assert choose({"sdpa": 1.0, "eager": 1.3}) == "sdpa"
    assert choose({"eager": 0.5, "flex": 0.7}) == "eager"  # the default not timed: the fastest
    assert choose({"sdpa": 1.0, "eager": 0.95}, margin=0.01) == "eager"


def test_fixed_implementation_is_set_unmeasured():
    model = tiny_llama()
    assert set(supported(model)) == {"sdpa", "eager"} and current(model) == "sdpa"
    out = resolve_attention(model, "eager", step=lambda: pytest.fail("a fixed choice is not timed"))
    assert out == {"implementation": "eager", "rule": "fixed"} and current(model) == "eager"
    assert all(getattr(m.config, "_attn_implementation", "eager") == "eager" for m in model.modules()
               if hasattr(m, "config"))


def test_real_timing_leaves_the_model_and_the_random_streams_as_they_were():
    model = tiny_llama()
    x = torch.randint(0, 64, (2, 12))
    calls = []

    def step() -> None:
        calls.append(current(model))
        model(input_ids=x).logits.sum().backward()
        torch.rand(3)  # a step draws random numbers (dropout): the probe must not move the streams
    state = torch.get_rng_state()
    seconds = REAL_MEASURE(model, step, ["sdpa", "eager"])
    assert set(seconds) == {"sdpa", "eager"} and all(v > 0 for v in seconds.values())
    assert calls == ["sdpa", "eager"] * 3  # one warm-up each, then REPEATS = 2 rounds timing each in turn
    assert current(model) == "sdpa" and torch.equal(torch.get_rng_state(), state)


def test_timings_are_cached_per_situation(monkeypatch):
    """A measurement is kept under its situation and reused there; another situation (or a damaged entry) is
    measured again; the machine's part of the key is its CPU model and flags (or GPU name)."""
    model, calls = tiny_llama(), []

    def timed(model, step, names):
        calls.append(list(names))
        return {"sdpa": 2.0, "eager": 1.0}
    monkeypatch.setattr(attention, "measure", timed)
    key = situation(torch.device("cpu"), {"model": "tiny-llama", "rows": 2, "row_tokens": 12})
    first = resolve_attention(model, "auto", lambda: None, key)
    assert first["rule"] == "measured" and first["implementation"] == "eager" and first["measured_at"]
    use(model, "sdpa")
    again = resolve_attention(model, "auto", lambda: None, key)
    assert again == {**first, "rule": "cached"} and current(model) == "eager" and len(calls) == 1
    assert resolve_attention(model, "auto", lambda: None, {**key, "rows": 4})["rule"] == "measured"
    for entry in timings.cache_folder().glob("*.json"):
        entry.write_text("{")  # damaged: measured again
    assert resolve_attention(model, "auto", lambda: None, key)["rule"] == "measured" and len(calls) == 3
    monkeypatch.setattr(timings, "cpu_flags", lambda: "model name : CPU X\nflags : avx2\nmodel name : CPU X\n")
    avx2 = machine(torch.device("cpu"))
    monkeypatch.setattr(timings, "cpu_flags", lambda: "model name : CPU X\nflags : avx2 amx_bf16\n")
    assert avx2.startswith("CPU X | ") and machine(torch.device("cpu")) != avx2


LM = ["model.name=tiny-llama", "model.precision=fp32", "data.task=instruction", "data.source=reasoning-instructions",
      "data.max_examples=48", "data.partition=iid", "fed.clients=2", "fed.rounds=1", "fed.local_steps=2",
      "train.batch_size=2", "lora.rank=4", "model.max_length=32", "eval.max_examples=4", "eval.samples=0",
      "eval.global_model=false"]


def _run(tmp_path, name, *extra):
    sim = Simulation(load_config(None, [*LM, *extra]), tmp_path / name, echo=lambda s: None, progress=False)
    sim.run()
    return sim


def test_runs_under_each_implementation_agree_and_record_the_choice(tmp_path, monkeypatch):
    sdpa = _run(tmp_path, "sdpa", "model.attention=sdpa")
    eager = _run(tmp_path, "eager", "model.attention=eager")
    assert sdpa.resolved.attention == {"implementation": "sdpa", "rule": "fixed"}
    assert eager.resolved.attention == {"implementation": "eager", "rule": "fixed"}
    for a, b in zip(sdpa.states, eager.states, strict=True):  # one round's adapters: float32 rounding apart
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(attention, "measure", lambda model, step, names: {"sdpa": 2.0, "eager": 1.0})
    auto = _run(tmp_path, "auto")  # auto, eager measured twice as fast: chosen, the timings recorded
    when = auto.resolved.attention.pop("measured_at")
    assert auto.resolved.attention == {"implementation": "eager", "rule": "measured",
                                       "seconds": {"sdpa": 2.0, "eager": 1.0}}
    assert current(auto.model) == "eager"
    assert "attention" in (tmp_path / "auto" / "config.yaml").read_text()
    monkeypatch.setattr(attention, "measure", lambda *a: pytest.fail("a resumed run keeps its recorded choice"))
    again = _run(tmp_path, "again")  # the same situation: the cached timings, not measured again
    assert again.resolved.attention == {**auto.resolved.attention, "rule": "cached", "measured_at": when}
    assert current(again.model) == "eager"
    resumed = Simulation(load_config(None, LM), tmp_path / "auto", echo=lambda s: None, progress=False,
                         resolved=auto.resolved)  # as api.resume builds it
    assert resumed.resolved.attention == auto.resolved.attention and current(resumed.model) == "eager"
