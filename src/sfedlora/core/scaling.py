"""The LoRA scaling factor gamma: the single place where it is computed.

Rules (alpha > 0, rank r >= 1, N >= 1 clients whose A is averaged in a round; an effective, non-integer N
is allowed, see hetero.partition_n):

    lora    gamma = alpha / r                 (Hu et al., 2022)
    rslora  gamma = alpha / sqrt(r)           (Kalajdzievski, 2023, arXiv 2312.03732)
    sfed    gamma = alpha * sqrt(N / r)       (SFed-LoRA, arXiv 2603.08058, Theorem 4.2)
    adaptive gamma = alpha * sqrt(N_eff / r)  (sfedlora's own: N_eff measured per module, core.adaptive;
                                              before the first aggregation N_eff = 1, i.e. rsLoRA)
    custom  gamma = alpha * N**a / r**b       (ablations; a = b = 0.5 equals sfed)
    none    gamma = 0                         (head-only baseline: the adapter contributes nothing)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeAlias

from sfedlora.errors import SfedloraError

Gamma: TypeAlias = float | Mapping[str, float]  # a client's gamma: one number, or one per adapted module (adaptive)

def scalar(gamma: Gamma) -> float:
    """One number for a gamma: itself, or the mean over modules of a per-module gamma (for code that takes a
    single gamma; the methods that fit adaptive scaling do not use it)."""
    return float(sum(gamma.values()) / len(gamma)) if isinstance(gamma, Mapping) else float(gamma)


RULES = ("lora", "rslora", "sfed", "adaptive", "custom", "none")


def scaling(rule: str, alpha: float, rank: int, n_clients: float = 1, a: float = 0.5, b: float = 0.5) -> float:
    """Return gamma for one adapter of rank `rank` when `n_clients` adapters' A are averaged."""
    if rule not in RULES:
        raise SfedloraError(f"unknown scaling rule {rule!r}; choose one of {', '.join(RULES)}")
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise SfedloraError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, float)) or not 1 <= n_clients < math.inf:
        raise SfedloraError(f"number of averaged clients N must be a finite number >= 1, got {n_clients!r}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise SfedloraError(f"lora alpha must be a finite number > 0, got {alpha!r}")
    if rule == "lora":
        return alpha / rank
    if rule == "rslora":
        return alpha / math.sqrt(rank)
    if rule in ("sfed", "adaptive"):  # adaptive: n_clients is the measured N_eff
        return alpha * math.sqrt(n_clients / rank)
    if rule == "custom":
        return alpha * n_clients**a / rank**b
    return 0.0
