"""What travels between the Flower apps, checked by hand: schemas, expected uploads, the reply checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sfedlora.flower.wire import check_upload, consensus, expected_upload, parse_eval, schema_of, template
from sfedlora.methods import get_method

SCHEMA = {"l.lora_A": [1, 6], "l.lora_B": [5, 1], "classifier.weight": [3, 5], "classifier.bias": [3]}


STATS = json.dumps({"loss": 1.0, "grad_norm_A": 0.1, "grad_norm_B": 0.2, "out_mean": 0.0, "out_var": 0.0,
                    "grad_norm_A_steps": [0.1], "grad_norm_B_steps": [0.2]})


def test_schema_and_expected_upload_by_hand():
    state = template(SCHEMA, 4)
    assert state["l.lora_A"].shape == (4, 6) and state["l.lora_B"].shape == (5, 4)
    assert schema_of(state) == SCHEMA
    assert expected_upload(get_method("sfed-lora"), SCHEMA, 4, 2.0, 1) == {
        "l.lora_A": (4, 6), "classifier.weight": (3, 5), "classifier.bias": (3,)}
    assert expected_upload(get_method("flexlora"), SCHEMA, 4, 2.0, 1) == {
        "l.delta": (5, 6), "classifier.weight": (3, 5), "classifier.bias": (3,)}
    assert consensus(["a", "b", "a"]) == ("a", [1])


@pytest.mark.parametrize("mutate, n_examples, stats, reason", [
    (lambda u: u, 10, STATS, None),
    (lambda u: None, 10, STATS, "no upload"),
    (lambda u: {k: v for k, v in u.items() if k != "classifier.bias"}, 10, STATS, "missing 1 keys"),
    (lambda u: {**u, "l.lora_B": torch.zeros(5, 4)}, 10, STATS, "1 unexpected keys (first l.lora_B)"),
    (lambda u: {**u, "l.lora_A": torch.zeros(8, 6)}, 10, STATS, "wrong shape for l.lora_A: (8, 6), expected (4, 6)"),
    (lambda u: {**u, "l.lora_A": torch.full((4, 6), math.nan)}, 10, STATS, "non-finite values in l.lora_A"),
    (lambda u: {**u, "l.lora_A": torch.zeros(4, 6, dtype=torch.long)}, 10, STATS, "expected floating point"),
    (lambda u: u, None, STATS, "missing or invalid example count"),
    (lambda u: u, 0, STATS, "missing or invalid example count"),
    (lambda u: u, 999, STATS, "differs from the 10 the node registered"),
    (lambda u: u, 10, "not json", "malformed training statistics"),
    (lambda u: u, 10, STATS.replace("1.0", "NaN"), "non-finite training loss"),
])
def test_check_upload(mutate, n_examples, stats, reason):
    expected = expected_upload(get_method("sfed-lora"), SCHEMA, 4, 2.0, 1)
    upload = {k: torch.zeros(v) for k, v in expected.items()}
    got = check_upload(mutate(upload), expected, n_examples, 10, stats)
    assert (got is None) if reason is None else (reason in got)


ROW = {"loss": 1.0, "n": 4, "accuracy": 0.5}


@pytest.mark.parametrize("row, ok", [
    (ROW, True),
    ({**ROW, "n": 5}, False),  # more examples than the node registered for the split: it would outweigh others
    ({**ROW, "n": -1}, False), ({**ROW, "n": 2.5}, False), ({**ROW, "loss": math.nan}, False),
    ({**ROW, "accuracy": "high"}, False), ({"accuracy": 0.5, "n": 4}, False),
])
def test_parse_eval_checks_the_counts_that_weight_a_client(row, ok):
    got = parse_eval(json.dumps({"val": ROW, "test": row}), {"val": 4, "test": 4})
    assert (got is not None) == ok


def test_generation_samples_from_a_client_are_checked():
    from sfedlora.flower.wire import parse_samples

    good = [{"prompt": "p", "reference": "r", "completion": "c"}]
    assert parse_samples(json.dumps(good), 2) == good
    for bad in ("not json", json.dumps({"prompt": "p"}), json.dumps(good * 3),
                json.dumps([{"prompt": "p", "reference": "r", "completion": 3}]),
                json.dumps([{"prompt": "p", "reference": "r", "completion": "c", "extra": "x"}]),
                json.dumps([{"prompt": "x" * 100_000, "reference": "r", "completion": "c"}]), None):
        assert parse_samples(bad, 2) is None, bad
