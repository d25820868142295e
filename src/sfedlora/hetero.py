"""Heterogeneous client ranks: padding, rank-partitioned and zero-padded averaging, spectra.

Rank dimension: dim 0 of lora_A (r, d_in), dim 1 of lora_B (d_out, r); one more leading dimension
when stacked over clients. A client of rank r_i padded to r_max has zeros in rows r_i.. of A and
columns r_i.. of B; those entries get zero gradient (the padded A rows meet zero B columns and vice
versa), so they stay exactly zero through training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sfedlora.aggregate import accumulate, normalise
from sfedlora.inject import factor_kind

State = dict[str, torch.Tensor]


def rank_dim(key: str, stacked: bool = False) -> int | None:
    """The rank dimension of an adapter-state entry, or None for entries without one (heads)."""
    kind = factor_kind(key)
    if kind == "A":
        return 1 if stacked else 0
    if kind == "B":
        return 2 if stacked else 1
    return None


def rank_of(state: State) -> int:
    key = next(k for k in state if factor_kind(k) == "A")
    return int(state[key].shape[0])


def pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad `t` along `dim` to `size`."""
    extra = size - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def pad_state(state: State, r_max: int) -> State:
    return {k: pad(v, d, r_max) if (d := rank_dim(k)) is not None else v for k, v in state.items()}


def truncate_state(state: State, rank: int, stacked: bool = False) -> State:
    """The first `rank` rows of A and columns of B (all of them where there are fewer)."""
    out = {}
    for k, v in state.items():
        d = rank_dim(k, stacked)
        out[k] = v.narrow(d, 0, min(rank, v.shape[d])).clone() if d is not None else v
    return out


def overlay(old: State, new: State) -> State:
    """`old` with `new` written over it, key by key. Where both have an entry with a rank dimension, new's
    leading rows of A (columns of B) replace old's and old's further rows stay: the result has the larger of
    the two ranks. A round's update under partial participation only reaches the participants' largest
    rank, so a client (or the server's store of the latest update) keeps the rows nobody sent this round."""
    out = dict(old)
    for k, v in new.items():
        d = rank_dim(k)
        if k not in old or d is None or v.shape[d] >= old[k].shape[d]:
            out[k] = v
        else:
            merged = old[k].clone()
            merged.narrow(d, 0, v.shape[d]).copy_(v)
            out[k] = merged
    return out


def partitions(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Rank partitions [l, h) between consecutive distinct ranks: (2, 4, 8) -> [0,2), [2,4), [4,8)."""
    bounds = sorted(set(ranks))
    return [(lo, hi) for lo, hi in zip([0, *bounds[:-1]], bounds)]


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
        members = [wi if r >= hi else 0.0 for wi, r in zip(w, ranks)]
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
            members = [(s[k].narrow(d, lo, hi - lo), wi) for s, r, wi in zip(states, ranks, pw) if r >= hi]
            parts.append(accumulate([t for t, _ in members], [wi for _, wi in members]))
        out[k] = torch.cat(parts, dim=d)
    return out


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


def pad_opt_state(state: dict[str, dict[str, torch.Tensor]], r_max: int) -> dict[str, dict[str, torch.Tensor]]:
    """A client's optimiser state padded like its parameters (moments of padded entries are zero)."""
    return {k: {n: pad(t, d, r_max) if (d := rank_dim(k)) is not None and t.dim() > 0 else t for n, t in st.items()}
            for k, st in state.items()}


def truncate_opt_state(state: dict[str, dict[str, torch.Tensor]], rank: int) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.narrow(d, 0, rank).clone() if (d := rank_dim(k)) is not None and t.dim() > 0 else t
                for n, t in st.items()} for k, st in state.items()}
