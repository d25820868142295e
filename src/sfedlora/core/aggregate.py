"""Aggregation arithmetic: pure functions over states and weights. No model, no engine.

FedAvg-style weighted means, and for heterogeneous ranks the rank-partitioned mean (each partition [l, h)
between distinct ranks averaged over the clients that have it, raFLoRA) and the zero-padded mean (HetLoRA).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from sfedlora.core.state import State, pad_state, rank_dim, rank_of


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



def weighted_mean(states: Iterable[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i[k] for every key k (weights normalised first); fp32 accumulation in client order,
    reading the states one at a time (a client store on disk need not hold them all)."""
    w = normalise(weights) if weights else []
    acc: dict[str, torch.Tensor] | None = None
    for wi, s in zip(w, states, strict=True):
        if acc is None:
            acc = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in s.items()}
        elif s.keys() != acc.keys():
            raise ValueError("client states to aggregate have different keys")
        for k, v in s.items():
            if v.shape != acc[k].shape:
                raise ValueError(f"client tensors {k} have different shapes (ranks?): "
                                 f"{tuple(acc[k].shape)} and {tuple(v.shape)}")
            if wi:
                acc[k].add_(v.float(), alpha=wi)
    if acc is None:
        raise ValueError("nothing to aggregate")
    return acc



def accumulate(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i * t_i in fp32, in client order (every mean in sfedlora adds up the same way)."""
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for wi, t in zip(weights, tensors, strict=True):
        if wi:
            acc.add_(t.float(), alpha=wi)
    return acc



def partitions(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Rank partitions [l, h) between consecutive distinct ranks: (2, 4, 8) -> [0,2), [2,4), [4,8)."""
    bounds = sorted(set(ranks))
    return [(lo, hi) for lo, hi in zip([0, *bounds[:-1]], bounds, strict=True)]



def partition_n(ranks: Sequence[int], per_round: int) -> list[float]:
    """Per client, the effective number of clients its A is averaged over under rank-partitioned averaging
    (lora.scaling_n=partition). Row k of A, in partition [l, h), is averaged over the clients with r_j >= h,
    of which per_round / len(ranks) take part in a round on average (at least 1 counted): N_k. Averaging N_k
    independent draws shrinks that row's square by 1/N_k, so ||A_i||^2 shrinks by mean_k 1/N_k over the
    client's r_i rows, and its N is their harmonic mean, N_i = r_i / sum_k 1/N_k. Equal ranks: N = per_round.
    Ranks (2, 4, 8), all taking part: 3, 4 / (2/3 + 2/2) = 2.4, 8 / (2/3 + 2/2 + 4/1) = 1.41."""
    n = len(ranks)
    out = []
    for r in ranks:
        inv = sum((hi - lo) / max(1.0, sum(rj >= hi for rj in ranks) * per_round / n)
                  for lo, hi in partitions(ranks) if hi <= r)
        out.append(r / inv)
    return out



def partition_weights(ranks: Sequence[int], weights: Sequence[float]) -> list[tuple[tuple[int, int], list[float]]]:
    """Per partition [l, h): the weights renormalised over the clients that have it (r_i >= h)."""
    w = normalise(weights)
    out = []
    for lo, hi in partitions(ranks):
        members = [wi if r >= hi else 0.0 for wi, r in zip(w, ranks, strict=True)]
        out.append(((lo, hi), normalise(members)))
    return out



def zero_padded_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """HetLoRA-style: pad every client to r_max with zeros, then the weighted mean over all clients."""
    r_max = max(rank_of(s) for s in states)
    w = normalise(weights)
    padded = [pad_state(s, r_max) for s in states]
    return {k: accumulate([p[k] for p in padded], w) for k in padded[0]}



def rank_partitioned_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """raFLoRA: each rank partition [l, h) is averaged only over the clients that have it, with the
    weights renormalised over them (Wu et al., arXiv 2602.13486). Equal ranks: the plain weighted mean.
    Entries without a rank dimension (heads) get the plain weighted mean."""
    ranks = [rank_of(s) for s in states]
    w = normalise(weights)
    out: State = {}
    for k in states[0]:
        d = rank_dim(k)
        if d is None:
            out[k] = accumulate([s[k] for s in states], w)
            continue
        parts = []
        for (lo, hi), pw in partition_weights(ranks, w):
            members = [(s[k].narrow(d, lo, hi - lo), wi) for s, r, wi in zip(states, ranks, pw, strict=True) if r >= hi]
            parts.append(accumulate([t for t, _ in members], [wi for _, wi in members]))
        out[k] = torch.cat(parts, dim=d)
    return out

