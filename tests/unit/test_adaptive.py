"""The adaptive scaling rule's estimator (core.adaptive), with hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from sfedlora.core.adaptive import init_sq_norms, measure, module_gammas, n_eff_cumulative, n_eff_first
from sfedlora.core.scaling import scalar, scaling

T = torch.tensor


def test_identical_factors_do_not_shrink():
    a = T([[1.0, 2.0], [3.0, 4.0]])
    assert n_eff_first([a, a.clone(), a.clone()], [1, 1, 1]) == pytest.approx(1.0)


def test_orthogonal_equal_norm_factors_give_n():
    # e1, e2 under uniform weights: spread = 1, |mean|^2 = 0.5^2 + 0.5^2 = 0.5 -> 2
    assert n_eff_first([T([[1.0, 0.0]]), T([[0.0, 1.0]])], [5, 5]) == pytest.approx(2.0)
    eye = torch.eye(3)
    assert n_eff_first([eye[i:i + 1] for i in range(3)], [1, 1, 1]) == pytest.approx(3.0)


def test_weighted_orthogonal_factors_give_one_over_sum_of_squared_weights():
    # w = (3, 1) / 4: spread = 1, |(0.75, 0.25)|^2 = 0.625 -> 1.6 = 1 / (0.75^2 + 0.25^2)
    assert n_eff_first([T([[1.0, 0.0]]), T([[0.0, 1.0]])], [3, 1]) == pytest.approx(1.6)


def test_correlated_factors_fall_in_between():
    # A1 = (1, 0), A2 = (1, 1): spread = (1 + 2) / 2 = 1.5, |(1, 0.5)|^2 = 1.25 -> 1.2
    assert n_eff_first([T([[1.0, 0.0]]), T([[1.0, 1.0]])], [1, 1]) == pytest.approx(1.2)


def test_factors_that_cancel_give_the_largest_value_the_weights_allow():
    assert n_eff_first([T([[1.0, 0.0]]), T([[-1.0, 0.0]])], [1, 1]) == pytest.approx(2.0)


def test_cumulative_is_clamped_to_one_and_n():
    agg = T([[1.0, 0.0]])  # |A|^2 = 1
    assert n_eff_cumulative(2.0, agg, 4) == pytest.approx(2.0)
    assert n_eff_cumulative(2.0, agg * 0.5, 4) == pytest.approx(4.0)  # 2 / 0.25 = 8 -> 4
    assert n_eff_cumulative(2.0, agg * 2.0, 4) == pytest.approx(1.0)  # 2 / 4 = 0.5 -> 1


def test_measure_first_once_and_cumulative_every_time():
    ups = [{"m.lora_A": T([[1.0, 0.0]]), "m.lora_B": T([[9.0]])}, {"m.lora_A": T([[0.0, 1.0]]), "m.lora_B": T([[9.0]])}]
    agg = {"m.lora_A": T([[0.5, 0.5]])}
    assert measure("first", ups, [1, 1], agg, {}, {}) == {"m": pytest.approx(2.0)}
    assert measure("first", ups, [1, 1], agg, {"m": 1.7}, {}) == {"m": 1.7}  # measured once, kept
    assert measure("cumulative", ups, [1, 1], agg, {"m": 1.7}, {"m": 1.0}) == {"m": pytest.approx(2.0)}  # 1 / 0.5
    with pytest.raises(ValueError, match="unknown adaptive mode"):
        measure("sometimes", ups, [1, 1], agg, {}, {})


def test_gammas_from_n_eff():
    assert module_gammas(8.0, 16, {"q": 4.0, "v": 1.0}) == {"q": pytest.approx(4.0), "v": pytest.approx(2.0)}
    assert module_gammas(8.0, 16, {"v": 1.0})["v"] == pytest.approx(scaling("rslora", 8.0, 16))  # N_eff 1: rsLoRA
    assert scaling("adaptive", 8.0, 16, 4) == pytest.approx(scaling("sfed", 8.0, 16, 4))
    assert scalar({"q": 4.0, "v": 2.0}) == 3.0 and scalar(2.5) == 2.5
    states = [{"m.lora_A": T([[1.0, 1.0]])}, {"m.lora_A": T([[3.0, 0.0]])}]
    assert init_sq_norms(states) == {"m": pytest.approx((2.0 + 9.0) / 2)}
    assert math.isclose(module_gammas(2.0, 4, {"m": 4.0})["m"], 2.0)
