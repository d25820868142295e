"""The client's side of a round, the one implementation both runners call: the in-process runner for each
batched group of clients, a Flower node for its one client (runtime.protocol, steps 6, 2, 3 and 4).

    download   current(): the client's adapters with the server's latest update (method.download); the holder
               computes it once per update
    evaluate   the client's own adapters on its own validation and test splits (when asked)
    train      K local steps of the factors method.trained(t) (when the client takes part)
    check      a client whose loss or adapters turned non-finite goes back to its state before the round, its data
               order moved on, and uploads nothing (the reason is reported)
    upload     method.upload: what the method sends
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sfedlora.client import local
from sfedlora.config import RunConfig
from sfedlora.core.scaling import Gamma, scalar
from sfedlora.core.state import OptState, State, select
from sfedlora.data.batching import ClientSampler
from sfedlora.data.encode import Encoded
from sfedlora.methods import FederatedMethod


class Engine(Protocol):
    """What a process holds to run clients (runtime.setup.Setup is one)."""

    cfg: RunConfig
    method: FederatedMethod
    model: Any
    tok: Any
    task: str
    device: torch.device


@dataclass
class Held:
    """One client between rounds: its adapters (before the latest download, in the in-process runner's store), its
    optimiser state, its data order."""

    adapters: State
    opt: OptState
    sampler: ClientSampler


@dataclass
class Trained:
    """One participant's round: what it keeps (its new state; excluded: its state before the round with its data
    order moved on), its training statistics, and its upload, or why it has none."""

    held: Held
    stats: dict[str, Any]
    upload: State | None = None
    excluded: str | None = None


@dataclass
class Stepped:
    """A group's step: evaluation rows by split (one per client) and, for instruction and math tasks, each client's
    sample completions; and each participant's round."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: list[list[dict[str, str]]] | None = None
    trained: list[Trained] = field(default_factory=list)
    eval_s: float = 0.0
    train_s: float = 0.0


def current(method: FederatedMethod, adapters: State, latest: State, gamma: Gamma) -> State:
    """Download: a client's adapters with the server's latest update (every update so far, by rows) received; the
    same state as downloading every round's update as it came."""
    return method.download(adapters, latest, scalar(gamma)) if latest else adapters


def merge_sum(method: FederatedMethod, merged: dict[str, torch.Tensor], update: State) -> dict[str, torch.Tensor]:
    """FLoRA: the fp32 sum of the updates merged into W0 so far, with this round's dW added (round after round, in
    order: every runner holds the same sum, bit for bit)."""
    out = dict(merged)
    for m, d in method.merged(update).items():
        out[m] = out[m] + d if m in out else d
    return out


def restarted(method: FederatedMethod, held: Held, latest: State, gamma: Gamma, fresh: State) -> Held:
    """FLoRA: a client after its base took the round's merge: `fresh` adapters (drawn for that round) with the head
    it downloads from the server's `latest`, and no optimiser state; its data order goes on."""
    return Held({**fresh, **select(current(method, held.adapters, latest, gamma), {"head"})}, {}, held.sampler)


def non_finite(loss: float, state: State) -> str | None:
    """Check: why a client's round cannot be aggregated, or None."""
    if not math.isfinite(loss):
        return f"non-finite training loss {loss}"
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        return f"non-finite values in {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
    return None


def train(engine: Engine, rnd: int, held: Sequence[Held], states: Sequence[State], gammas: Sequence[Gamma],
          encoded: Sequence[Encoded], on_step: Callable[[], None] | None = None) -> list[tuple[Held, dict[str, Any]]]:
    """K local steps of round `rnd` for a group of clients from their current `states`: each one's new state
    (unchecked) and training statistics. Their data orders move on in place."""
    e = engine
    new, opt, stats = local.train_clients(e.model, e.tok, e.task, e.cfg, e.method.trained(rnd), states, gammas,
                                          [h.opt for h in held], [h.sampler for h in held], [x.train for x in encoded],
                                          e.device, on_step=on_step, rnd=rnd,
                                          anchored=e.method.uploaded(rnd) & e.method.trained(rnd))
    return [(Held(s, o, h.sampler), row) for s, o, h, row in zip(new, opt, held, stats, strict=True)]


def settle(method: FederatedMethod, rnd: int, before: Held, after: Held, stats: dict[str, Any],
           gamma: Gamma) -> Trained:
    """Check and upload one participant's round; `before`: what it held before the round."""
    reason = non_finite(stats["loss"], after.adapters)
    if reason:
        return Trained(Held(before.adapters, before.opt, after.sampler), stats, excluded=reason)
    return Trained(after, stats, upload=method.upload(after.adapters, scalar(gamma), rnd))


def step(engine: Engine, rnd: int, held: Sequence[Held], states: Sequence[State], gammas: Sequence[Gamma],
         encoded: Sequence[Encoded], evaluate: bool, take_part: bool,
         on_step: Callable[[], None] | None = None, parts: Sequence[str] = local.PARTS) -> Stepped:
    """A group's side of round `rnd` from its current (downloaded) `states`: evaluate them if asked (the state the
    previous aggregation left; `parts` of the evaluation, local.evaluate_clients), then train, check and upload
    if the group takes part."""
    out = Stepped()
    t0 = time.perf_counter()
    if evaluate:
        e = engine
        rows = local.evaluate_clients(e.model, e.tok, e.task, e.cfg, states, gammas, encoded, e.device, parts)
        out.rows = {split: rows[split] for split in ("val", "test")}
        if "samples" in rows:
            out.samples = [r["samples"] for r in rows["samples"]]
    t1 = time.perf_counter()
    if take_part:
        out.trained = [settle(engine.method, rnd, before, after, stats, g) for before, (after, stats), g in
                       zip(held, train(engine, rnd, held, states, gammas, encoded, on_step), gammas, strict=True)]
    out.eval_s, out.train_s = t1 - t0, time.perf_counter() - t1
    return out
