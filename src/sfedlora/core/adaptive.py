"""The adaptive scaling rule: gamma = alpha * sqrt(N_eff / r) with N_eff measured, not assumed.

SFed-LoRA's sqrt(N) (arXiv 2603.08058, Theorem 4.2) compensates the shrinkage of A when N clients' A's
are averaged: 1/sqrt(N) for independently drawn, equal-norm, near-orthogonal A's. That assumption is false
for a shared init (averaging identical A's shrinks nothing) and in round 1 (nothing has been averaged
yet). This rule (no published method has it; sfedlora's own) measures the shrinkage per adapted module:

  before the first aggregation   N_eff = 1                      (gamma = alpha/sqrt(r), rsLoRA's)
  `first` (default)              at the first aggregation, once per module,
                                   N_eff = sum_i w_i ||A_i||^2 / ||sum_i w_i A_i||^2     (w normalised)
                                 and kept from then on
  `cumulative`                   at every aggregation,
                                   N_eff = mean_i ||A_i at init||^2 / ||aggregated A||^2, clamped to [1, N]

`first` gives N for N equal-norm orthogonal A's under uniform weights, 1 / sum_i w_i^2 under other
weights, 1 for identical A's, and values in between for correlated ones. The per-round shrink is not
re-measured (after round 1 every client starts from one shared A, so it reads ~1 again), and B is never
rescaled when gamma changes (that would cancel the compensation in the forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from sfedlora.core.scaling import scaling

MODES = ("first", "cumulative")


def _normalised(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if not total > 0:
        raise ValueError("aggregation weights must sum to a positive number")
    return [float(w) / total for w in weights]


def n_eff_first(a_factors: Sequence[torch.Tensor], weights: Sequence[float]) -> float:
    """sum_i w_i ||A_i||^2 / ||sum_i w_i A_i||^2 for one module's uploaded A's (weights normalised): at least 1
    (the mean's squared norm is never above the mean squared norm; rounding could put equal A's a hair under, so
    1 is its floor). An aggregate of zero norm (A's that cancel exactly) gives the largest value the weights allow,
    1/sum w^2."""
    w = _normalised(weights)
    spread = sum(wi * float(a.double().pow(2).sum()) for wi, a in zip(w, a_factors, strict=True))
    mean = sum(wi * a.double() for wi, a in zip(w, a_factors, strict=True))
    agg = float(torch.as_tensor(mean).pow(2).sum())
    cap = 1.0 / sum(wi * wi for wi in w)
    if agg <= 0 or not math.isfinite(spread / agg):
        return cap
    return max(spread / agg, 1.0)


def n_eff_cumulative(init_sq_norm: float, aggregated: torch.Tensor, n: int) -> float:
    """mean_i ||A_i at init||^2 / ||aggregated A||^2, clamped to [1, n]."""
    agg = float(aggregated.double().pow(2).sum())
    value = init_sq_norm / agg if agg > 0 else float(n)
    return min(max(value, 1.0), float(n))


def measure(mode: str, uploads: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
            aggregate: Mapping[str, torch.Tensor], previous: Mapping[str, float],
            init_sq_norms: Mapping[str, float]) -> dict[str, float]:
    """N_eff per module after an aggregation: `first` measures once (keeps `previous` where it has values),
    `cumulative` re-estimates every time. Keys are module names (the `.lora_A` entries' prefixes)."""
    modules = sorted(k.removesuffix(".lora_A") for k in aggregate if k.endswith(".lora_A"))
    if mode == "first":
        if previous:
            return dict(previous)
        return {m: n_eff_first([u[f"{m}.lora_A"] for u in uploads], weights) for m in modules}
    if mode == "cumulative":
        return {m: n_eff_cumulative(init_sq_norms[m], aggregate[f"{m}.lora_A"], len(uploads)) for m in modules}
    raise ValueError(f"unknown adaptive mode {mode!r}; choose one of {', '.join(MODES)}")


def init_sq_norms(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """mean_i ||A_i||^2 per module over the clients' initial states (the `cumulative` reference), read one
    state at a time."""
    sums: dict[str, float] = {}
    n = 0
    for s in states:
        for k, a in s.items():
            if k.endswith(".lora_A"):
                m = k.removesuffix(".lora_A")
                sums[m] = sums.get(m, 0.0) + float(a.double().pow(2).sum())
        n += 1
    return {m: sums[m] / n for m in sorted(sums)}


def module_gammas(alpha: float, rank: int, n_eff: Mapping[str, float]) -> dict[str, float]:
    """gamma per module: the adaptive rule of core.scaling with each module's N_eff (at least 1: a run recorded before
    n_eff_first had its floor may hold a value rounded a hair under it)."""
    return {m: scaling("adaptive", alpha, rank, max(n, 1.0)) for m, n in n_eff.items()}
