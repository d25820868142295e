"""Set-up's probes of one training step: the activation memory a row saves and the time a group's step takes
(simulation.grouping), and the time a step takes under each attention implementation (runtime.attention). Run once
the model and the data are in place; the caller installs its clients' adapters afterwards."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from sfedlora.adapters.inject import group_parameters
from sfedlora.client.checkpointing import checkpointed
from sfedlora.client.local import State, fresh_state, install
from sfedlora.client.losses import group_loss
from sfedlora.client.train import adapters_training
from sfedlora.core.scaling import Gamma
from sfedlora.data.batching import collate
from sfedlora.runtime.attention import DEFAULT, current, resolve_attention, use
from sfedlora.runtime.models import revision
from sfedlora.runtime.setup import Setup
from sfedlora.runtime.timings import situation


def probe_step(model: Any, tok: Any, task: str, row: dict[str, Any], batch_size: int, adapters: State, gamma: Gamma,
               device: torch.device, checkpointing: bool = False, clients: int = 1) -> Callable[[bool], torch.Tensor]:
    """A training step of `clients` clients (a batched group), each on `batch_size` copies of `row` with `adapters`
    installed, A, B and head trained, as training runs it (dropout, gradient checkpointing): a callable that runs the
    forward, and the backward if asked (the gradients then dropped), and returns the loss. Set-up's probes: the
    memory a row saves and the time a group's step takes (simulation.grouping), the time a step takes under each
    attention implementation (runtime.attention)."""
    batch = {k: v.to(device) for k, v in collate([row] * (batch_size * clients), tok.pad_token_id).items()}
    install(model, [adapters] * clients, [gamma] * clients, device)
    params = list(group_parameters(model).values())
    for p in params:
        p.requires_grad_(True)

    def run(backward: bool = True) -> torch.Tensor:
        with adapters_training(model), checkpointed(model, checkpointing):
            loss = group_loss(model, batch, clients, task).sum()  # the clients' losses, as training sums them
            if backward:
                loss.backward()
                for p in params:
                    p.grad = None
        return loss
    return run


def set_attention(s: Setup, measure: bool = True, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """model.attention resolved on the set-up's model (runtime.attention) and recorded in the set-up (and its run
    description, where it has one): auto times a training step of this process's worst case, the longest training
    example at train.batch_size with the widest rank's fresh adapters. `recorded`: a resumed run's choice, kept
    unmeasured (a run recorded before model.attention ran the default). `measure` False (a Flower node, which a
    deployment builds per message: a choice per message would cost seconds each and could change between rounds):
    auto keeps the loaded implementation."""
    cfg, rows = s.cfg, [ex for e in s.encoded.values() for ex in e.train]
    auto = cfg.model.attention == "auto"
    if recorded is not None:
        s.attention = recorded or {"implementation": DEFAULT, "rule": "unmeasured (recorded before model.attention)"}
        use(s.model, s.attention["implementation"])
    elif auto and not (rows and measure):
        why = "no training rows" if measure else "a Flower node does not measure"
        s.attention = {"implementation": current(s.model), "rule": f"unmeasured ({why})"}
    else:
        step: Callable[[], object] = lambda: None  # a fixed choice is not timed
        key = None
        if auto:  # one probe, built at the first timing (none where the timings are cached), run for every timing
            top = max(cfg.lora.ranks or cfg.lora.rank_set or [cfg.lora.rank])
            longest = max(rows, key=lambda e: len(e["input_ids"]))
            probe = functools.cache(lambda: probe_step(s.model, s.tok, s.task, longest, cfg.train.batch_size,
                                                       fresh_state(s.model, cfg, "independent", 0, top, top), 1.0,
                                                       s.device, cfg.train.gradient_checkpointing))
            step = lambda: probe()(True)  # noqa: E731
            key = probe_situation(s, longest, top)
        s.attention = resolve_attention(s.model, cfg.model.attention, step, key)
    if s.resolved is not None:
        s.resolved = replace(s.resolved, attention=s.attention)
    return s.attention


def probe_situation(s: Setup, row: dict[str, Any], rank: int) -> dict[str, Any]:
    """What a timing of this set-up's probe step depends on (runtime.timings): the machine and libraries, the model,
    its precision and attention, the step's shape and adapters."""
    cfg = s.cfg
    return situation(s.device, {
        "model": cfg.model.name, "revision": revision(cfg.model.name, s.model), "precision": s.precision,
        "quantization": cfg.model.quantization, "attention": current(s.model), "task": s.task,
        "labels": len(s.label_names), "dropout": cfg.lora.dropout,
        "rows": cfg.train.batch_size, "row_tokens": len(row["input_ids"]), "rank": rank, "targets": s.targets,
        "checkpointing": cfg.train.gradient_checkpointing, "compile": cfg.train.compile})
