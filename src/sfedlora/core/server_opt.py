"""Server optimizers: the server's step on the aggregated factors, from the round's pseudo-gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2 (FedAdagrad, FedYogi, FedAdam), and
Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
arXiv 1909.06335 (FedAvgM). For every aggregated tensor x (the factors the method averages, and the head):

    delta_t = mean_t - x_{t-1}                       the pseudo-gradient: the round's weighted mean of the
                                                     uploads minus the previous global value
    avgm     m_t = mu m_{t-1} + delta_t              x_t = x_{t-1} + eta m_t
    adagrad  m_t = b1 m_{t-1} + (1 - b1) delta_t     v_t = v_{t-1} + delta_t^2
    yogi     m_t as adagrad                          v_t = v_{t-1} - (1 - b2) delta_t^2 sign(v_{t-1} - delta_t^2)
    adam     m_t as adagrad                          v_t = b2 v_{t-1} + (1 - b2) delta_t^2
             (adagrad, yogi, adam)                   x_t = x_{t-1} + eta m_t / (sqrt(v_t) + tau)

element-wise, with m_0 = 0 and v_0 = tau^2 (the paper's v_{-1} >= tau^2) and no bias correction, as in the
paper. `none` is plain FedAvg: x_t = mean_t. With avgm, eta = 1 and mu = 0 it is FedAvg again (up to rounding).

x_0 is what every client starts from where the server can know it (runtime.protocol.known_start: B = 0, a
classification head, A with a shared init). A tensor with no previous value (A with independent inits: each
client draws its own, so there is no global A before the first mean) is adopted as it is at its first
aggregation; its pseudo-gradients start with the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]
SERVER_OPTIMIZERS = ("none", "avgm", "adagrad", "yogi", "adam")
DEFAULT_LR = {"avgm": 1.0, "adagrad": 0.01, "yogi": 0.01, "adam": 0.01}  # eta where fed.server_lr is null


@dataclass(frozen=True)
class ServerOptSettings:
    kind: str = "none"
    lr: float = 1.0  # eta
    momentum: float = 0.9  # mu (avgm)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


def server_lr(kind: str, lr: float | None) -> float:
    """eta: the one given, else the optimizer's default (DEFAULT_LR)."""
    return float(lr) if lr is not None else DEFAULT_LR.get(kind, 1.0)


def tensor_step(s: ServerOptSettings, prev: torch.Tensor, mean: torch.Tensor, m: torch.Tensor | None,
                v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One tensor's server step: (x_t, m_t, v_t) from x_{t-1} = `prev`, the round's `mean` and the moments
    (None: the first pseudo-gradient, m_0 = 0 and v_0 = tau^2). Computed in fp32 (or the tensors' wider dtype)."""
    dtype = torch.promote_types(prev.dtype, torch.float32)
    x, delta = prev.to(dtype), mean.to(dtype) - prev.to(dtype)
    m = torch.zeros_like(x) if m is None else m
    if s.kind == "avgm":
        m = s.momentum * m + delta
        return (x + s.lr * m).to(mean.dtype), m, None
    m = s.beta1 * m + (1 - s.beta1) * delta
    v = torch.full_like(x, s.tau ** 2) if v is None else v
    sq = delta.square()
    if s.kind == "adagrad":
        v = v + sq
    elif s.kind == "yogi":
        v = v - (1 - s.beta2) * sq * torch.sign(v - sq)
    elif s.kind == "adam":
        v = s.beta2 * v + (1 - s.beta2) * sq
    else:
        raise ValueError(f"unknown server optimizer {s.kind!r}")
    return (x + s.lr * m / (v.sqrt() + s.tau)).to(mean.dtype), m, v


class ServerOptimizer:
    """The server optimizer's state between rounds: the moments per aggregated tensor."""

    def __init__(self, settings: ServerOptSettings) -> None:
        self.settings = settings
        self.m: State = {}
        self.v: State = {}

    @property
    def on(self) -> bool:
        return self.settings.kind != "none"

    def step(self, latest: State, mean: State) -> State:
        """The round's update from its weighted `mean`, against the previous global values `latest`."""
        if not self.on:
            return mean
        out = {}
        for k, value in mean.items():
            if k not in latest:
                out[k] = value  # no previous global value: adopted, the moments start next time
                continue
            if latest[k].shape != value.shape:
                raise ValueError(f"server optimizer: {k} has shape {tuple(value.shape)} this round and "
                                 f"{tuple(latest[k].shape)} before")
            out[k], self.m[k], v = tensor_step(self.settings, latest[k], value, self.m.get(k), self.v.get(k))
            if v is not None:
                self.v[k] = v
        return out

    def saved(self) -> dict[str, State]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def restore(self, saved: dict[str, State] | None) -> None:
        saved = saved or {}
        self.m, self.v = dict(saved.get("m", {})), dict(saved.get("v", {}))
