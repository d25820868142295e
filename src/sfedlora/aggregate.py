"""Aggregation arithmetic: pure functions over dict[str, Tensor] and weights. No model, no engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from sfedlora.inject import factor_kind


def normalise(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1. Raises on an empty or non-positive total."""
    total = float(sum(weights))
    if not weights or total <= 0:
        raise ValueError(f"aggregation weights must have a positive sum, got {list(weights)}")
    return [float(w) / total for w in weights]


def client_weights(n_examples: Sequence[int], weighting: str) -> list[float]:
    """'samples': w_i = n_i / sum n; 'uniform': w_i = 1 / N."""
    if weighting == "uniform":
        return normalise([1.0] * len(n_examples))
    if weighting == "samples":
        return normalise([float(n) for n in n_examples])
    raise ValueError(f"unknown weighting {weighting!r}")


def weighted_mean(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i[k] for every key k (weights normalised first); fp32 accumulation."""
    if not states:
        raise ValueError("nothing to aggregate")
    w = normalise(weights)
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys:
            raise ValueError("client states to aggregate have different keys")
    for k in keys:
        if len({tuple(s[k].shape) for s in states}) > 1:
            raise ValueError(f"client tensors {k} have different shapes (ranks?): "
                             f"{sorted({tuple(s[k].shape) for s in states})}")
    return {k: accumulate([s[k] for s in states], w) for k in keys}


def accumulate(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i * t_i in fp32, in client order (every mean in sfedlora adds up the same way)."""
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for wi, t in zip(weights, tensors):
        if wi:
            acc.add_(t.float(), alpha=wi)
    return acc


def select(state: dict[str, torch.Tensor], kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of `state` whose factor kind ('A', 'B', 'head') is in `kinds`."""
    wanted = set(kinds)
    return {k: v for k, v in state.items() if factor_kind(k) in wanted}


def payload_bytes(state: dict[str, torch.Tensor], bytes_per_value: int = 4) -> int:
    """Bytes to send `state` as fp32 values."""
    return sum(int(v.numel()) for v in state.values()) * bytes_per_value
