"""Means over clients, by hand: weighted by what each client evaluated (examples; tokens for LM losses;
decoded examples for math accuracy), never by aggregation weights; perplexity is exp of a mean token loss."""

from __future__ import annotations

import math

import pytest

from sfedlora.core.metrics import means, personal


def test_lm_means_weight_by_tokens_and_take_exp_of_the_mean_loss():
    rows = [{"loss": 1.0, "n": 2, "tokens": 10, "perplexity": math.e},
            {"loss": 3.0, "n": 3, "tokens": 30, "perplexity": math.e ** 3}]
    got = means(rows)
    assert got["loss"] == pytest.approx({"uniform": 2.0, "weighted": 2.5})  # (10 * 1 + 30 * 3) / 40
    assert got["perplexity"]["weighted"] == pytest.approx(math.exp(2.5))  # not (e + e^3) / 2 = 11.4
    assert got["perplexity"]["uniform"] == pytest.approx(math.exp(2.0))
    assert set(got) == {"loss", "perplexity"}  # counts are not averaged


def test_classification_means_weight_by_examples_whatever_the_aggregation_weighting():
    rows = [{"loss": 0.5, "n": 10, "accuracy": 0.9}, {"loss": 1.0, "n": 30, "accuracy": 0.5},
            {"loss": 0.0, "n": 0, "accuracy": 0.0}]  # a client with nothing to evaluate does not count
    got = means(rows)
    assert got["accuracy"] == pytest.approx({"uniform": 0.7, "weighted": 0.6})  # (9 + 15) / 40
    assert got["loss"] == pytest.approx({"uniform": 0.75, "weighted": 0.875})  # (5 + 30) / 40
    assert personal({"val": rows, "test": rows})["test"]["accuracy"]["weighted"] == pytest.approx(0.6)


def test_math_accuracy_weights_by_decoded_examples():
    rows = [{"loss": 1.0, "n": 10, "tokens": 100, "perplexity": math.e, "accuracy": 1.0, "n_decoded": 1},
            {"loss": 1.0, "n": 10, "tokens": 100, "perplexity": math.e, "accuracy": 0.0, "n_decoded": 3}]
    assert means(rows)["accuracy"] == pytest.approx({"uniform": 0.5, "weighted": 0.25})
