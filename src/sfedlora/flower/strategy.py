"""A Flower Strategy whose aggregation is a sfedlora method's: no second implementation of any method.

configure_train sends every recipient the server's latest update and the round's plan (which nodes
train, whether the previous round is evaluated); aggregate_train is `method.aggregate` over the uploads
the server accepted, weighted as the in-process runner weights them (the run itself aggregates through
runtime.protocol.Server, as the in-process runner does: server-side DP and a server optimizer included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from sfedlora.core.metrics import means
from sfedlora.flower.wire import from_record, parse_eval, to_record
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
        """Each test metric over the clients that reported a valid evaluation, weighted by what each
        evaluated (metrics.means): for Flower's own log; the run folder has the full record."""
        rows: list[dict[str, Any]] = []
        for r in replies:
            if r.has_error() or "report" not in r.content or "eval" not in r.content["report"]:
                continue
            parsed = parse_eval(r.content["report"]["eval"], {"val": 2**62, "test": 2**62})
            if parsed is not None:
                rows.append(parsed["test"])
        if not rows:
            return None
        return MetricRecord({k: v["weighted"] for k, v in means(rows).items()})

    def summary(self) -> None:
        from logging import INFO

        from flwr.common import log

        log(INFO, "\t├── sfedlora method: %s (%s)", self.method.name, self.method.citation)
