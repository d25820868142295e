"""FLoRA on Flower: every round's update is merged into every client's base, also into the bases of nodes that sat
the round out. The server keeps what each node still has to merge: the recent rounds' stacked updates, and older
ones folded, in round order, into one fp32 sum (the same sum a node computes, bit for bit: client.step.merge_sum).
A node's message carries the sum where the node is behind it (`merge-base-<b>`: every round up to b) and the rounds
after what it last reported merged (`merge-<t>`); the node merges them in order (flower.node) and reports where
its base stands."""

from __future__ import annotations

from typing import Any

from sfedlora.client.step import merge_sum
from sfedlora.core.state import State, payload_bytes
from sfedlora.flower.wire import from_record, to_record
from sfedlora.methods import FederatedMethod

KEEP = 8  # rounds whose stacked updates the server keeps; a node further behind gets the folded sum
BASE, ROUND = "merge-base-", "merge-"


class MergeLog:
    def __init__(self, method: FederatedMethod, n_clients: int) -> None:
        self.method, self.n = method, n_clients
        self.rounds: dict[int, State] = {}  # the rounds after base_round, by round
        self.base_round = 0  # the rounds up to it are folded into base
        self.base: dict[str, Any] = {}
        self.merged_to: dict[int, int] = {}  # by partition: the round its node last reported its base holds

    def add(self, rnd: int, update: State) -> None:
        """Round `rnd`'s update (every round has one, an empty one too: every client restarts after it); rounds
        every node holds, or older than KEEP rounds, are folded into the sum."""
        self.rounds[rnd] = update
        horizon = max(min(self.merged_to.get(p, 0) for p in range(self.n)), rnd - KEEP)
        for t in sorted(t for t in self.rounds if t <= horizon):
            self.base, self.base_round = merge_sum(self.method, self.base, self.rounds.pop(t)), t

    def attach(self, content: Any, partition: int) -> int:
        """Put into a message's content what the node of `partition` has not merged; returns its bytes."""
        done, sent = self.merged_to.get(partition, 0), 0
        if done < self.base_round:
            content[f"{BASE}{self.base_round}"] = to_record(self.base)
            sent += payload_bytes(self.base)
            done = self.base_round
        for t in sorted(t for t in self.rounds if t > done):
            content[f"{ROUND}{t}"] = to_record(self.rounds[t])
            sent += payload_bytes(self.rounds[t])
        return sent

    def heard(self, partition: int, report: Any) -> None:
        """A node's report of where its base stands (`merged_round`); an unreadable one counts as nothing merged
        (the node is then sent everything again)."""
        try:
            value = int(report["merged_round"])
        except (KeyError, TypeError, ValueError):
            value = 0
        self.merged_to[partition] = max(0, value)


def received(content: Any) -> tuple[tuple[int, State] | None, dict[int, State]]:
    """From a message's content: the folded sum (its round, the sum) if sent, and the rounds' updates by round."""
    base, rounds = None, {}
    for key in content.array_records:
        if key.startswith(BASE) and key[len(BASE):].isdigit():
            base = (int(key[len(BASE):]), from_record(content[key]))
        elif key.startswith(ROUND) and key[len(ROUND):].isdigit():
            rounds[int(key[len(ROUND):])] = from_record(content[key])
    return base, rounds
