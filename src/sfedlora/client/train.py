"""The client local loop: K steps for a group of clients at once, on their stacked adapters.

Adapters train in train mode (their dropout on), the frozen base in eval mode (its blocks recomputed in
the backward pass with train.gradient_checkpointing). Every step: the learning rate of this global step
(core.schedule), one forward/backward over the client-major batch (or train.grad_accum_steps micro-
batches whose summed losses are divided by their total count: the gradient of the large batch's mean),
per-client gradient norms of A and B (before clipping), per-client global-norm clipping, one per-client
optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sfedlora.adapters.inject import group_parameters, lora_layers
from sfedlora.client.checkpointing import checkpointed
from sfedlora.client.losses import group_loss, group_terms
from sfedlora.client.optim import StackedOptimizer
from sfedlora.config import TrainConfig
from sfedlora.core.schedule import lr_factor
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


def scale_grads(params: Iterable[torch.nn.Parameter], factor: torch.Tensor) -> None:
    """Multiply client c's gradients (the leading dimension of every stacked parameter) by factor[c]."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))


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
                trained: frozenset[str], steps: int, cfg: TrainConfig, task: str, first_step: int = 0,
                total_steps: int = 0, on_step: Callable[[], None] | None = None,
                anchored: frozenset[str] = frozenset()) -> GroupStats:
    """`steps` optimiser steps; `first_step` is the global step of the first (its learning rate follows
    train.lr_schedule over `total_steps`, the run's; 0: this call's steps). With train.prox_mu > 0 the factor
    kinds in `anchored` (those the server aggregates) get FedProx's proximal term (Li et al., MLSys 2020)
    mu/2 |w - w_0|^2, w_0 each client's own values when the call starts (what it downloaded)."""
    with adapters_training(model), checkpointed(model, cfg.gradient_checkpointing):
        return _train_steps(model, next_batch, optimizer, trained, steps, cfg, task, first_step,
                            total_steps or steps, on_step, anchored if cfg.prox_mu > 0 else frozenset())


def proximal(active: Mapping[str, torch.Tensor], anchors: dict[str, torch.Tensor], mu: float) -> None:
    """FedProx: the gradient of mu/2 |w - w_0|^2, mu (w - w_0), added to each anchored parameter's gradient
    (stacked clients: each row block against its own client's w_0)."""
    for k, w0 in anchors.items():
        p = active[k]
        term = mu * (p.detach() - w0)
        p.grad = term if p.grad is None else p.grad.add_(term)


def _train_steps(model: Any, next_batch: Callable[[], dict[str, torch.Tensor]], optimizer: StackedOptimizer,
                 trained: frozenset[str], steps: int, cfg: TrainConfig, task: str, first_step: int,
                 total_steps: int, on_step: Callable[[], None] | None, anchored: frozenset[str]) -> GroupStats:
    params = group_parameters(model)
    for key, p in params.items():
        p.requires_grad_(factor_kind(key) in trained)
    active = {k: p for k, p in params.items() if p.requires_grad}
    anchors = {k: p.detach().clone() for k, p in active.items() if factor_kind(k) in anchored}  # (C, ...) each
    any_param = next(iter(params.values()))
    c, device = any_param.shape[0], any_param.device
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.moments = None
    loss_acc = torch.zeros(c, device=device)
    norm_steps: dict[str, list[torch.Tensor]] = {"A": [], "B": []}
    tokens = 0
    def take() -> dict[str, torch.Tensor]:
        nonlocal tokens
        batch = next_batch()
        tokens += int(batch["attention_mask"].sum())
        real = batch["attention_mask"] * (batch["weight"] > 0).unsqueeze(1)  # (rows, seq): no padding, no filler
        for layer in layers:
            layer.moment_mask = real.reshape(c, -1)  # client-major rows: (C, n*seq), as the layer's input
        return batch

    for k in range(steps):
        optimizer.lr = cfg.lr * lr_factor(cfg.lr_schedule, first_step + k, total_steps, cfg.warmup_steps)
        if cfg.grad_accum_steps == 1:
            losses = group_loss(model, take(), c, task)  # (C,)
            losses.sum().backward()
        else:  # sum the micro-batches' losses, then divide the gradients by the total count: the large batch's
            sums, counts = torch.zeros(c, device=device), torch.zeros(c, device=device)
            for _ in range(cfg.grad_accum_steps):
                loss_sum, count = group_terms(model, take(), c, task)
                loss_sum.sum().backward()
                sums += loss_sum.detach()
                counts += count.detach()
            inv = 1.0 / counts.clamp_min(1)
            scale_grads(active.values(), inv)
            losses = sums * inv
        loss_acc += losses.detach()
        for kind in ("A", "B"):
            grads = [p.grad for k, p in active.items() if factor_kind(k) == kind and p.grad is not None]
            norm = per_client_sq_norm(grads, c, device).sqrt() if grads else torch.zeros(c, device=device)
            norm_steps[kind].append(norm)
        if anchors:  # after the norms: they stay the task loss's, comparable with and without the term
            proximal(active, anchors, cfg.prox_mu)
        if cfg.grad_clip is not None:
            total = per_client_sq_norm([p.grad for p in active.values() if p.grad is not None], c, device).sqrt()
            scale_grads(active.values(), (cfg.grad_clip / (total + 1e-6)).clamp(max=1.0))  # clip_grad_norm_
        optimizer.step(active)
        for p in active.values():
            p.grad = None
        if on_step is not None:
            on_step()
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
