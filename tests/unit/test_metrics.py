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


def test_macro_f1_by_hand():
    from sfedlora.core.metrics import macro_f1

    # class 0: tp 3, fn 1, fp 2 -> 6/9; class 1: tp 4, fn 2, fp 1 -> 8/11; mean 0.69697
    assert macro_f1([[3, 1], [2, 4]]) == pytest.approx((6 / 9 + 8 / 11) / 2)
    # a label that neither occurs nor is predicted does not count: (4/5 + 2/3) / 2
    assert macro_f1([[0, 0, 0], [0, 2, 1], [0, 0, 1]]) == pytest.approx((0.8 + 2 / 3) / 2)
    assert math.isnan(macro_f1([[0, 0], [0, 0]]))


def test_pooled_macro_f1_is_of_the_summed_confusions():
    from sfedlora.core.metrics import macro_f1, means

    a, b = [[3, 1], [2, 4]], [[5, 0], [0, 0]]
    rows = [{"loss": 0.5, "n": 10, "accuracy": 0.7, "macro_f1": macro_f1(a), "confusion": a},
            {"loss": 0.1, "n": 5, "accuracy": 1.0, "macro_f1": macro_f1(b), "confusion": b}]
    out = means(rows)
    assert out["macro_f1"]["uniform"] == pytest.approx((macro_f1(a) + 1.0) / 2)  # b: class 0 only, F1 1
    assert out["macro_f1"]["weighted"] == pytest.approx(macro_f1([[8, 1], [2, 4]]))
    assert "confusion" not in out
