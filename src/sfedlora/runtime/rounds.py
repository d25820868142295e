"""The round loop both runners run (runtime.protocol): select, the clients' steps, aggregate, adopt, record. Only the
transport differs: the in-process runner calls the client step (client.step) for batched groups, a Flower server
sends each node a message whose reply is that node's step.

An evaluated round is evaluated on the state its aggregation left: at once by a transport that evaluates in a
separate pass (in process), or with the next round's messages by one where every message costs a process start
(`piggyback`: a Flower deployment), plus a last message for the last round. Either way the records are the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sfedlora.core.state import State
from sfedlora.runtime.protocol import Exchange, Server
from sfedlora.runtime.runlog import RunLog


@dataclass
class Reply:
    """What one exchange brought back: the round's uploads (Exchange), the evaluation asked for (None if it was not
    asked, or no client returned a valid one) with the clients' sample completions, and its timings."""

    exchange: Exchange
    ev: dict[str, Any] | None = None
    samples: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    t_train: float = 0.0
    t_eval: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # fields the transport adds to the round's record


class Transport(Protocol):
    piggyback: bool  # evaluations travel with the next round's messages

    def exchange(self, rnd: int, selected: list[int], evaluate: int | None) -> Reply:
        """Round `rnd`'s client steps for the `selected` clients (none: an evaluation only), after evaluating
        (`evaluate`: the round whose state is evaluated, or None) every evaluated client."""
        ...

    def aggregate(self, rnd: int, exchange: Exchange) -> State:
        """Step 5: the round's update, adopted by the server (normally Server.aggregate)."""
        ...

    def adopted(self, rnd: int, update: State, exchange: Exchange) -> Mapping[int, State] | None:
        """After the aggregation: the accepted participants' states with the update downloaded, where the transport
        holds them (for the record's spectrum), else None."""
        ...

    def notes(self) -> dict[str, Any]:
        """Fields to add to the record about to be written (what happened since the last one)."""
        ...

    def recorded(self, record: dict[str, Any], log: RunLog) -> None:
        """After a round's record is written (checkpoints, best-round adapters)."""
        ...


def with_eval(record: dict[str, Any], reply: Reply, own_pass: bool) -> dict[str, Any]:
    """A round's record with its evaluation, which came in `reply` (`own_pass`: in an exchange of its own, whose
    time adds to the round's; else with the next round's messages). Round 0 is only its evaluation."""
    out = {**record, "eval": reply.ev, "eval_s": reply.t_eval}
    out["wall_s"] = reply.t_eval if record["round"] == 0 else record["wall_s"] + (reply.t_eval if own_pass else 0.0)
    return out | {k: v for k, v in reply.extra.items() if k not in out}


def run_rounds(server: Server, transport: Transport, log: RunLog, first: int, rounds: int, every: int) -> None:
    """Rounds `first`..`rounds` (round 0: the base model's evaluation), each evaluated every `every` rounds and at
    the last; records written in order as each round is complete."""
    pending: dict[str, Any] | None = None  # a round waiting for its evaluation

    def evaluated(record: dict[str, Any]) -> None:
        nonlocal pending
        if transport.piggyback:
            pending = record
            return
        reply = transport.exchange(record["round"], [], record["round"])
        write(with_eval(record, reply, own_pass=True), reply)

    def write(record: dict[str, Any], reply: Reply) -> None:
        record = {**record, **transport.notes()}
        log.write(record, reply.samples)
        transport.recorded(record, log)

    if first == 0:
        evaluated(server.record(0, Exchange(selected=[]), {}, None, 0.0, 0.0, 0.0))
    for rnd in range(max(first, 1), rounds + 1):
        t0 = time.perf_counter()
        selected = server.select()  # step 1
        reply = transport.exchange(rnd, selected, None if pending is None else pending["round"])  # steps 6, 2-4
        if pending is not None:
            write(with_eval(pending, reply, own_pass=False), reply)
            pending = None
        ex = reply.exchange
        server.require(rnd, ex)
        update = transport.aggregate(rnd, ex)  # step 5
        server.rescale(ex, update)
        clients = transport.adopted(rnd, update, ex)
        record = {**server.record(rnd, ex, update, None, reply.t_train, 0.0, time.perf_counter() - t0, clients),
                  **reply.extra}  # step 7
        if rnd % every == 0 or rnd == rounds:
            evaluated(record)
        else:
            write(record, reply)
    if pending is not None:  # the last round's evaluation, in a message of its own
        reply = transport.exchange(rounds + 1, [], pending["round"])
        write(with_eval(pending, reply, own_pass=False), reply)
