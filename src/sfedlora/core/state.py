"""A client's adapter state and the operations on it: pure functions over dict[str, Tensor], no model code.

A state maps keys to tensors:
    "<module>.lora_A" (r, d_in), "<module>.lora_B" (d_out, r)   for every adapted linear layer
    "<head>.weight" (out, in), ["<head>.bias" (out,)]           for a trainable task head, if any
A server's update may hold further entries no client keeps (FLoRA's stacked modules, FlexLoRA's dW and
singular factors). The rank dimension is dim 0 of lora_A and dim 1 of lora_B (one more leading dimension
when stacked over clients). A client of rank r_i padded to r_max has zeros in rows r_i.. of A and columns
r_i.. of B; those entries get zero gradient (the padded A rows meet zero B columns and vice versa), so
they stay exactly zero through training.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

State = dict[str, torch.Tensor]
OptState = dict[str, dict[str, torch.Tensor]]  # param key -> {"step": (), "exp_avg": ..., ...}


def factor_kind(key: str) -> str:
    """'A', 'B' or 'head' for a key of an adapter state; 'server' for what only a server's update holds
    (FLoRA's stacked modules, FlexLoRA's dW and singular factors), which no client keeps."""
    if key.endswith(".lora_A"):
        return "A"
    if key.endswith(".lora_B"):
        return "B"
    if key.endswith((".weight", ".bias")):
        return "head"
    return "server"



def select(state: dict[str, torch.Tensor], kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of `state` whose factor kind ('A', 'B', 'head') is in `kinds`."""
    wanted = set(kinds)
    return {k: v for k, v in state.items() if factor_kind(k) in wanted}



def payload_bytes(state: dict[str, torch.Tensor], bytes_per_value: int = 4) -> int:
    """Bytes to send `state` as fp32 values."""
    return sum(int(v.numel()) for v in state.values()) * bytes_per_value



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



def pad_opt_state(state: dict[str, dict[str, torch.Tensor]], r_max: int) -> dict[str, dict[str, torch.Tensor]]:
    """A client's optimiser state padded like its parameters (moments of padded entries are zero)."""
    return {k: {n: pad(t, d, r_max) if (d := rank_dim(k)) is not None and t.dim() > 0 else t for n, t in st.items()}
            for k, st in state.items()}



def truncate_opt_state(state: dict[str, dict[str, torch.Tensor]], rank: int) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.narrow(d, 0, rank).clone() if (d := rank_dim(k)) is not None and t.dim() > 0 else t
                for n, t in st.items()} for k, st in state.items()}

