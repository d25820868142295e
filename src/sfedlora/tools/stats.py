"""Seed-to-seed statistics for reports: a mean with its 95% interval, and the paired difference between two
arms run on the same seeds (same partitions and initial adapters per seed), with its interval.

The intervals are Student-t intervals over the distinct seeds (n - 1 degrees of freedom): honest for
few seeds, and wide for them, as they should be. A paired difference whose interval contains 0 is
"within noise": the seeds do not tell the two arms apart. Metrics on a few hundred test examples move in
steps (1/120 of accuracy for 120 examples), so two or three seeds can give the very same difference: its
interval then has no width, which is not evidence, and gets no verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# two-sided 95%: the 0.975 quantile of Student's t with df degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


# one-sided 80%: the 0.80 quantile of Student's t (power 80% in the smallest detectable difference)
T80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
       11: 0.876, 12: 0.873, 13: 0.870, 14: 0.868, 15: 0.866, 16: 0.865, 17: 0.863, 18: 0.862, 19: 0.861, 20: 0.860,
       21: 0.859, 22: 0.858, 23: 0.858, 24: 0.857, 25: 0.856, 26: 0.856, 27: 0.855, 28: 0.855, 29: 0.854, 30: 0.854,
       40: 0.851, 60: 0.848, 120: 0.845}


def _quantile(table: dict[int, float], beyond: float, df: int) -> float:
    if df < 1:
        raise ValueError("a t quantile needs at least 2 values")
    return beyond if df > 120 else table[max(k for k in table if k <= df)]


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t (the largest tabulated df at or below `df`; 1.960 beyond 120)."""
    return _quantile(T975, 1.960, df)


def t80(df: int) -> float:
    """The 0.80 quantile of Student's t (as t975; 0.842 beyond 120)."""
    return _quantile(T80, 0.842, df)


@dataclass(frozen=True)
class Interval:
    mean: float
    half: float  # half-width of the 95% interval; nan with a single value
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def contains_zero(self) -> bool:
        return not (self.low > 0 or self.high < 0)  # nan (n = 1) counts as containing it

    def text(self, digits: int = 4) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1, no interval)"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval half-width over seeds."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, math.nan, 1)
    return Interval(mean, t975(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


def paired(arm: Mapping[int, float], reference: Mapping[int, float]) -> Interval | None:
    """arm - reference on the seeds both have (by seed), with its 95% interval; None with no common seed."""
    seeds = sorted(set(arm) & set(reference))
    if not seeds:
        return None
    return interval([arm[s] - reference[s] for s in seeds])


def detectable(diff: Interval) -> float:
    """The smallest true paired difference these seeds could have told from 0: the one a two-sided 95% test on n
    seeds detects with 80% power when the seed-to-seed standard deviation of the difference is what they show,
    (t_.975(n-1) + t_.80(n-1)) sd / sqrt(n) (the usual approximation to the noncentral t); nan with one seed."""
    if diff.n < 2:
        return math.nan
    return diff.half * (t975(diff.n - 1) + t80(diff.n - 1)) / t975(diff.n - 1)


def verdict(diff: Interval | None, higher_is_better: bool) -> str:
    """How to read a paired difference: better, worse, or within noise (its interval contains 0)."""
    if diff is None:
        return "no common seeds"
    if diff.n == 1:
        return "one seed: no verdict"
    if diff.half < 1e-9 and abs(diff.mean) >= 1e-9:  # e.g. two test examples' worth on every seed: no spread
        return "equal on every seed: no interval"
    if diff.contains_zero():
        return "within noise"
    return "better" if (diff.mean > 0) == higher_is_better else "worse"


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x: the exponent k of y ~ x^k (nan if any y is not positive and
    finite, or fewer than two distinct x)."""
    if len(set(xs)) < 2 or any(not (y > 0 and math.isfinite(y)) for y in ys):
        return math.nan
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
