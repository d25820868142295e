"""The client local loop: K steps for a group of clients at once, on their stacked adapters.

Adapters train in train mode (their dropout on), the frozen base in eval mode. Every step: one
forward/backward over the client-major batch, per-client gradient norms of A and B
(before clipping), per-client global-norm clipping, one per-client optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sfedlora.adapters.inject import group_parameters, lora_layers
from sfedlora.client.losses import group_loss
from sfedlora.client.optim import StackedOptimizer
from sfedlora.config import TrainConfig
from sfedlora.core.state import factor_kind


@dataclass
class GroupStats:
    """Per-client means over the K local steps, each a list of length C."""

    loss: list[float]
    grad_norm_A: list[float]
    grad_norm_B: list[float]
    grad_norm_A_steps: list[list[float]]  # [client][step], for per-iteration plots
    grad_norm_B_steps: list[list[float]]
    out_mean: list[float]  # of the adapter outputs gamma B A x over every adapted layer and real token (no padding)
    out_var: list[float]
    tokens: int


def per_client_sq_norm(grads: list[torch.Tensor], n_clients: int, device: torch.device) -> torch.Tensor:
    """sum over tensors of ||grad[c]||^2 for each client c: (C,)."""
    total = torch.zeros(n_clients, device=device, dtype=torch.float32)
    for g in grads:
        total += g.float().reshape(n_clients, -1).square().sum(1)
    return total


@contextmanager
def adapters_training(model: Any) -> Iterator[None]:
    """The adapters in train mode (lora.dropout applies) while the block runs, back in eval mode (and not
    tracking output moments) after.
    The frozen base model stays in eval mode throughout: its own dropout is off, as it is frozen, and
    batched training equals sequential training only with a deterministic base."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.train()
    try:
        yield
    finally:
        for layer in layers:
            layer.eval()
            layer.moment_mask = None


def train_group(model: Any, next_batch: Callable[[], dict[str, torch.Tensor]], optimizer: StackedOptimizer,
                trained: frozenset[str], steps: int, cfg: TrainConfig, task: str) -> GroupStats:
    with adapters_training(model):
        return _train_steps(model, next_batch, optimizer, trained, steps, cfg, task)


def _train_steps(model: Any, next_batch: Callable[[], dict[str, torch.Tensor]], optimizer: StackedOptimizer,
                 trained: frozenset[str], steps: int, cfg: TrainConfig, task: str) -> GroupStats:
    params = group_parameters(model)
    for key, p in params.items():
        p.requires_grad_(factor_kind(key) in trained)
    active = {k: p for k, p in params.items() if p.requires_grad}
    any_param = next(iter(params.values()))
    c, device = any_param.shape[0], any_param.device
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.moments = None
    loss_acc = torch.zeros(c, device=device)
    norm_steps: dict[str, list[torch.Tensor]] = {"A": [], "B": []}
    tokens = 0
    for _ in range(steps):
        batch = next_batch()
        tokens += int(batch["attention_mask"].sum())
        real = batch["attention_mask"] * (batch["weight"] > 0).unsqueeze(1)  # (rows, seq): no padding, no filler
        for layer in layers:
            layer.moment_mask = real.reshape(c, -1)  # client-major rows: (C, n*seq), as the layer's input
        losses = group_loss(model, batch, c, task)  # (C,)
        losses.sum().backward()
        loss_acc += losses.detach()
        for kind in ("A", "B"):
            grads = [p.grad for k, p in active.items() if factor_kind(k) == kind and p.grad is not None]
            norm = per_client_sq_norm(grads, c, device).sqrt() if grads else torch.zeros(c, device=device)
            norm_steps[kind].append(norm)
        if cfg.grad_clip is not None:
            total = per_client_sq_norm([p.grad for p in active.values() if p.grad is not None], c, device).sqrt()
            scale = (cfg.grad_clip / (total + 1e-6)).clamp(max=1.0)  # torch.nn.utils.clip_grad_norm_
            for p in active.values():
                if p.grad is not None:
                    p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))
        optimizer.step(active)
        for p in active.values():
            p.grad = None
    moments = torch.zeros(c, 3, dtype=torch.float64, device=device)
    for layer in layers:
        if layer.moments is not None:
            moments += layer.moments
    count = moments[:, 2].clamp_min(1)
    mean = moments[:, 0] / count
    var = (moments[:, 1] / count - mean.square()).clamp_min(0)
    return GroupStats(
        loss=(loss_acc / steps).tolist(),
        grad_norm_A=torch.stack(norm_steps["A"]).mean(0).tolist(),
        grad_norm_B=torch.stack(norm_steps["B"]).mean(0).tolist(),
        grad_norm_A_steps=torch.stack(norm_steps["A"], 1).tolist(),
        grad_norm_B_steps=torch.stack(norm_steps["B"], 1).tolist(),
        out_mean=mean.tolist(),
        out_var=var.tolist(),
        tokens=tokens,
    )
