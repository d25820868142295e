"""Report statistics with hand-computed numbers: t intervals over seeds, paired differences, verdicts."""

from __future__ import annotations

import math

import pytest

from sfedlora.tools.stats import interval, paired, t975, verdict


def test_interval_by_hand():
    # values 0.70, 0.72, 0.74: mean 0.72, sd 0.02, n 3: half = 4.303 * 0.02 / sqrt(3) = 0.049687
    iv = interval([0.70, 0.72, 0.74])
    assert iv.mean == pytest.approx(0.72) and iv.half == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert iv.text() == "0.7200 ± 0.0497"
    one = interval([0.5])
    assert one.n == 1 and math.isnan(one.half) and one.text() == "0.5000 (n=1, no interval)"


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(35) == 2.042 and t975(500) == 1.960
    with pytest.raises(ValueError):
        t975(0)


def test_paired_difference_uses_common_seeds_only():
    # seeds 0, 1, 2 in both: differences 0.02, 0.03, 0.04 -> mean 0.03, sd 0.01, half 4.303 * 0.01 / sqrt(3)
    arm = {0: 0.72, 1: 0.73, 2: 0.74, 7: 0.99}
    ref = {0: 0.70, 1: 0.70, 2: 0.70, 5: 0.10}
    d = paired(arm, ref)
    assert d is not None and d.n == 3 and d.mean == pytest.approx(0.03)
    assert d.half == pytest.approx(4.303 * 0.01 / math.sqrt(3))  # 0.0248: interval (0.005, 0.055), above 0
    assert verdict(d, higher_is_better=True) == "better" and verdict(d, higher_is_better=False) == "worse"
    assert paired({1: 0.5}, {2: 0.5}) is None and verdict(None, True) == "no common seeds"


def test_a_difference_inside_the_seed_spread_is_within_noise():
    # differences +0.05, -0.04, +0.02: mean 0.01, its interval spans 0
    d = paired({0: 0.75, 1: 0.66, 2: 0.72}, {0: 0.70, 1: 0.70, 2: 0.70})
    assert d is not None and d.low < 0 < d.high and verdict(d, True) == "within noise"
    assert verdict(paired({0: 0.8}, {0: 0.7}), True) == "one seed: no verdict"


def test_the_same_difference_on_every_seed_gets_no_verdict():
    """Two arms two test examples apart (of 120) on both seeds: a t interval of width 0, which says nothing."""
    d = paired({0: 74 / 120, 1: 63 / 120}, {0: 76 / 120, 1: 65 / 120})  # differ in the last bits of a float
    assert d is not None and d.half < 1e-12 and d.mean == pytest.approx(-2 / 120)
    assert verdict(d, True) == "equal on every seed: no interval"
    assert verdict(paired({0: 0.6, 1: 0.5}, {0: 0.6, 1: 0.5}), True) == "within noise"  # no difference at all


def test_the_smallest_detectable_difference_by_hand():
    """Paired differences 0.01, 0.03, 0.05 (sd 0.02, n 3): half-width 4.303 * 0.02 / sqrt(3) = 0.04969; the smallest
    difference detected with 80% power, (4.303 + 1.061) * 0.02 / sqrt(3) = 0.06194; none with one seed."""
    from sfedlora.tools.stats import detectable, interval

    diff = interval([0.01, 0.03, 0.05])
    assert diff.half == pytest.approx(0.049687, abs=1e-6)
    assert detectable(diff) == pytest.approx(0.061939, abs=1e-6)
    assert math.isnan(detectable(interval([0.02])))
