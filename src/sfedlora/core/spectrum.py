"""Rank-collapse diagnostics of an aggregated update (raFLoRA, arXiv 2602.13486): how much of its energy
lies beyond the smallest client rank, and its effective rank."""

from __future__ import annotations

import math

import torch


def spectrum_stats(delta: torch.Tensor, r_min: int) -> dict[str, float]:
    """Energy share of the singular directions beyond r_min, and the effective rank exp(H(s^2/sum s^2))."""
    s = torch.linalg.svdvals(delta.double())
    energy = s.square()
    total = float(energy.sum())
    if total == 0:
        return {"energy_beyond_rmin": 0.0, "effective_rank": 0.0}
    p = energy / total
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    return {"energy_beyond_rmin": float(energy[r_min:].sum()) / total, "effective_rank": math.exp(entropy)}

