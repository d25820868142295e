"""Server-side differential privacy with fixed clipping: the definition of Flower's
DifferentialPrivacyServerSideFixedClipping (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018, arXiv 1710.06963), computed by sfedlora for both runners.

    each accepted upload u_i, against the server's previous value x of the same tensors:
        d_i = u_i - x,   d_i <- d_i * min(1, C / |d_i|)     |d_i|: the L2 norm over all of the upload's tensors
        u_i <- x + d_i
    the method's aggregate of the clipped uploads, then Gaussian noise of std z C / n on every element,
    n the clients sampled per round: Flower's definition, with equal weights and every sampled client accepted.
    The aggregate is a weighted mean, in which one upload moves the result by up to w_i C (w normalised over the
    accepted clients), so sfedlora takes n = 1 / max_i w_i: n with equal weights, fewer with sample weights or
    excluded clients, so the noise never falls below what the clipping's sensitivity asks

Clipping and noise act on what the method uploads (the FedSA family's A, FFA-LoRA's B, FedIT's A and B, and a
classification head): a FedSA client's own B never leaves it, so no noise is needed on it.
"""

from __future__ import annotations

import math

import torch

State = dict[str, torch.Tensor]


def noise_std(multiplier: float, clipping_norm: float, per_round: float) -> float:
    """z C / n: the std of the Gaussian noise on each element of the aggregate."""
    return multiplier * clipping_norm / per_round


def sensitivity_clients(weights: list[float]) -> float:
    """The n of z C / n for a weighted mean with these (unnormalised) weights: 1 / max_i w_i of the normalised
    weights, since one clipped upload moves the aggregate by up to w_i C. Equal weights over the n clients
    averaged give n (Flower's z C / n with every sampled client accepted); sample weights give fewer."""
    return float(sum(weights)) / max(weights)


def clip_upload(upload: State, reference: State, clipping_norm: float) -> tuple[State, float]:
    """The upload with its change from `reference` clipped to L2 norm `clipping_norm` (over all its tensors),
    and the norm of that change before clipping."""
    delta = {k: upload[k].double() - reference[k].double() for k in upload}
    norm = math.sqrt(sum(float(d.square().sum()) for d in delta.values()))
    factor = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return {k: (reference[k].double() + delta[k] * factor).to(upload[k].dtype) for k in upload}, norm


def add_noise(aggregate: State, std: float, gen: torch.Generator) -> tuple[State, float]:
    """The aggregate with N(0, std^2) noise on every element (drawn from `gen`, in sorted key order), and the L2
    norm of the noise added."""
    out, sq = {}, 0.0
    for k in sorted(aggregate):
        v = aggregate[k]
        noise = torch.randn(v.shape, generator=gen, dtype=torch.float64) * std
        sq += float(noise.square().sum())
        out[k] = (v.double() + noise).to(v.dtype)
    return out, math.sqrt(sq)
