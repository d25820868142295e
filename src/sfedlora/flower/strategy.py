"""A Flower Strategy whose aggregation is a sfedlora method's: no second implementation of any method.

configure_train sends every recipient the server's latest update and the round's plan (which nodes
train, whether the previous round is evaluated); aggregate_train is `method.aggregate` over the uploads
the server accepted, weighted as the in-process runner weights them. Being a Strategy, it can be wrapped
by Flower's server-side differential-privacy strategies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from sfedlora.flower.wire import from_record, to_record
from sfedlora.methods import FederatedMethod


class MethodStrategy(Strategy):
    def __init__(self, method: FederatedMethod, weight_of_node: dict[int, float]) -> None:
        self.method = method
        self.weight_of_node = weight_of_node

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, message_type: str) -> list[Message]:
        recipients = json.loads(str(config["recipients"]))
        training = set(json.loads(str(config["participants"])))
        shared = {k: v for k, v in config.items() if k not in ("recipients", "participants")}
        return [Message(RecordDict({"update": arrays, "config": ConfigRecord({**shared, "train": n in training})}),
                        dst_node_id=n, message_type=message_type) for n in recipients]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._messages(arrays, config, "train")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies:
            return None, None
        uploads = [from_record(r.content["upload"]) for r in replies]
        weights = [self.weight_of_node[r.metadata.src_node_id] for r in replies]
        update = self.method.aggregate(uploads, weights, server_round)
        return to_record(update), MetricRecord({"clients": len(replies)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(arrays, config, "evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Sample-weighted mean of each numeric test metric over the clients that reported one."""
        rows: list[tuple[float, dict[str, Any]]] = []
        for r in replies:
            if r.has_error() or "report" not in r.content or "eval" not in r.content["report"]:
                continue
            try:
                test = json.loads(str(r.content["report"]["eval"]))["test"]
            except (ValueError, KeyError, TypeError):
                continue
            rows.append((self.weight_of_node.get(r.metadata.src_node_id, 0.0), test))
        if not rows:
            return None
        total = sum(w for w, _ in rows) or 1.0
        keys = [k for k, v in rows[0][1].items() if isinstance(v, (int, float)) and k != "n"]
        return MetricRecord({k: sum(w * float(row.get(k, 0.0)) for w, row in rows) / total for k in keys})

    def summary(self) -> None:
        from logging import INFO

        from flwr.common import log

        log(INFO, "\t├── sfedlora method: %s (%s)", self.method.name, self.method.citation)
