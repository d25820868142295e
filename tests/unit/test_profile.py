"""The profile's categories, by hand: operator names into categories, self times summed and shared."""

from __future__ import annotations

import pytest

from sfedlora.bench.profile import breakdown, category


def test_operators_fall_into_their_categories():
    assert category("aten::addmm") == category("aten::mm") == "base GEMMs"
    assert category("aten::bmm") == "adapter matmuls"
    assert category("aten::_log_softmax") == category("aten::_log_softmax_backward_data") == "loss"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("aten::_softmax") == "attention"
    assert category("aten::native_layer_norm_backward") == "norms" and category("aten::silu") == "activations"
    assert category("aten::addcdiv_") == "optimizer" and category("aten::copy_") == "data movement"
    assert category("aten::add_") == "elementwise" and category("aten::something_new") == "other"


def test_breakdown_sums_and_shares():
    out = breakdown([("aten::mm", 3.0), ("aten::addmm", 1.0), ("aten::bmm", 0.5), ("aten::mystery", 0.5)])
    assert out == [("base GEMMs", 4.0, pytest.approx(0.8)), ("adapter matmuls", 0.5, pytest.approx(0.1)),
                   ("other", 0.5, pytest.approx(0.1))]
