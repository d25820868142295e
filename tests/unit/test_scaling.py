import math

import pytest

from sfedlora.core.scaling import scaling
from sfedlora.errors import SfedloraError


@pytest.mark.parametrize(
    ("rule", "alpha", "rank", "n", "expected"),
    [
        ("lora", 8, 16, 4, 0.5),  # 8 / 16
        ("rslora", 8, 16, 4, 2.0),  # 8 / sqrt(16)
        ("sfed", 8, 16, 4, 4.0),  # 8 * sqrt(4 / 16)
        ("sfed", 16, 512, 3, 16 * math.sqrt(3 / 512)),
        ("sfed", 2, 1, 1, 2.0),  # N = 1, r = 1: all rules agree
        ("none", 8, 16, 4, 0.0),
    ],
)
def test_known_values(rule, alpha, rank, n, expected):
    assert scaling(rule, alpha, rank, n) == pytest.approx(expected, rel=1e-12)


def test_custom_exponents():
    # alpha * N**a / r**b = 8 * 4 / 16 with a = b = 1; a = b = 0.5 equals sfed
    assert scaling("custom", 8, 16, 4, a=1.0, b=1.0) == pytest.approx(2.0)
    assert scaling("custom", 8, 16, 4) == pytest.approx(scaling("sfed", 8, 16, 4))


def test_sfed_is_rslora_times_sqrt_n():
    for r in (4, 8, 128, 512):
        for n in (1, 3, 10):
            assert scaling("sfed", 8, r, n) == pytest.approx(scaling("rslora", 8, r, n) * math.sqrt(n))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "bogus", "alpha": 8, "rank": 8, "n_clients": 2}, "unknown scaling rule"),
        ({"rule": "sfed", "alpha": 8, "rank": 0, "n_clients": 2}, "rank must be an integer >= 1"),
        ({"rule": "sfed", "alpha": 8, "rank": 8, "n_clients": 0}, "N must be a finite number >= 1"),
        ({"rule": "sfed", "alpha": 8, "rank": 8, "n_clients": 0.5}, "N must be a finite number >= 1"),
        ({"rule": "sfed", "alpha": 0, "rank": 8, "n_clients": 2}, "alpha must be a finite number > 0"),
        ({"rule": "sfed", "alpha": -1.0, "rank": 8, "n_clients": 2}, "alpha must be a finite number > 0"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(SfedloraError, match=message):
        scaling(**kwargs)
