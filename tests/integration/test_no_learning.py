"""A run that cannot learn stops instead of recording a result: a round in which no adapter gets a gradient
(protocol.no_learning), and a library's warning that its results may be incorrect (errors.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from sfedlora.adapters.inject import lora_layers
from sfedlora.cli import main
from sfedlora.errors import SfedloraError, incorrect_results_are_errors
from sfedlora.runtime import rundir
from sfedlora.runtime import setup as runtime_setup
from sfedlora.runtime.protocol import no_learning

ARGS = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.max_examples=8"]


def test_no_learning_reads_the_rounds_gradient_norms():
    zero, both = {"grad_norm_A": 0.0, "grad_norm_B": 0.0}, frozenset({"A", "B"})
    assert no_learning({0: zero, 1: zero}, "sfed", both) is not None
    assert no_learning({0: zero, 1: zero}, "lora", frozenset({"B"})) is not None  # FFA-LoRA, RoLoRA's odd rounds
    assert no_learning({0: zero, 1: {"grad_norm_A": 0.0, "grad_norm_B": 1e-9}}, "sfed", both) is None  # one learns
    assert no_learning({0: zero, 1: zero}, "none", both) is None  # the head-only baseline: gamma = 0 was asked for
    assert no_learning({}, "sfed", both) is None  # nobody accepted: fed.min_clients speaks to that
    # A alone while B is still 0 (RoLoRA's round 2 after a round 1 at a warmup rate of 0): no gradient, no fault
    assert no_learning({0: zero, 1: zero}, "lora", frozenset({"A"})) is None


def test_rolora_whose_first_round_ran_at_a_warmup_rate_of_0_is_not_stopped(sentiment_file, tmp_path):
    """One local step at warmup rate 0 leaves B = 0 after round 1, so round 2 (A alone) has no gradient; round 3
    trains B again. Before, the no-learning check stopped the run at round 2."""
    out = tmp_path / "run"
    assert main(["run", f"data.source={sentiment_file}", *ARGS, "fed.rounds=3", "fed.local_steps=1",
                 "fed.method=rolora", "train.warmup_steps=1", "--out", str(out), "--quiet"]) == 0
    recs = rundir.records(out)
    assert recs[2]["grad_norm_A"] == {"0": 0.0, "1": 0.0} and any(x > 0 for x in recs[3]["grad_norm_B"].values())


def test_a_run_whose_adapters_get_no_gradient_stops_with_the_causes(sentiment_file, tmp_path, monkeypatch, capsys):
    real = runtime_setup.inject_adapters

    def detached(model, *args, **kwargs):  # adapted modules whose output never reaches the loss (frozen factors)
        targets = real(model, *args, **kwargs)
        for layer in lora_layers(model).values():
            layer.register_forward_hook(lambda _m, _i, out: out.detach())
        return targets

    monkeypatch.setattr(runtime_setup, "inject_adapters", detached)
    out = tmp_path / "run"
    assert main(["run", f"data.source={sentiment_file}", *ARGS, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "round 1: every participant's adapter gradients are exactly zero" in err
    assert "quantised base" in err and "scaling factor of 0" in err and "frozen factors" in err
    assert not rundir.finished(out) and [r["round"] for r in rundir.records(out)] == [0]  # round 1 not recorded


def test_the_head_only_baseline_still_runs(sentiment_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", f"data.source={sentiment_file}", *ARGS, "lora.scaling=none", "--out", str(out), "--quiet"]) == 0
    assert all(x == 0 for r in rundir.records(out)[1:] for k in ("grad_norm_A", "grad_norm_B") for x in r[k].values())


def test_a_warning_of_incorrect_results_is_an_error_and_others_are_not():
    # torch's words for a backward through an op without an autograd kernel (torch/csrc/autograd)
    said = ("an autograd kernel was not registered to the Autograd key(s) but we are trying to backprop through it. "
            "This may lead to silently incorrect behavior.")
    with pytest.raises(SfedloraError, match="round 3's local training stopped.*silently incorrect"):
        with incorrect_results_are_errors("round 3's local training"):
            warnings.warn(said, UserWarning, stacklevel=1)
    with pytest.warns(UserWarning, match="slow"), incorrect_results_are_errors("evaluation"):
        warnings.warn("this path is slow", UserWarning, stacklevel=1)


def test_a_backward_through_an_op_without_autograd_kernel_is_an_error():
    # a real case of torch's warning: a custom op with no autograd registration, differentiated through
    lib = torch.library.Library("sfedlora_test", "DEF")  # noqa: TOR901 (a throwaway namespace for this test)
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CPU")
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(SfedloraError, match="silently incorrect"), incorrect_results_are_errors("training"):
        torch.ops.sfedlora_test.twice(x * 1).sum().backward()
