"""The server side of a Flower run: register the nodes, then the round loop both runners run (runtime.rounds: the
same Server selects, aggregates and records as in the in-process runner; the same log writes the run folder), with
Flower messages as its transport. Only server-side DP aggregates through a Strategy (Flower's DP wrapper of
MethodStrategy).

One message per node and round: a round's message carries the server's latest update and, when the
previous round is evaluated, asks for that evaluation first, so a deployment (one ClientApp process per
message) starts one process per node and round. A final `evaluate` message evaluates the last round.

Replies are checked before aggregation (wrong keys or shapes, non-finite values, missing or inconsistent
example counts, errors, no reply in time): a rejected client is logged with its reason and left out of
the round; the run stops clearly only when fewer than fed.min_clients accepted uploads remain, when a
node's error says a library warned that its results may be incorrect (errors.voided), or when no accepted
participant's adapters got a gradient in a round that trains B (protocol.no_learning; nodes report their own
gradient norms).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sfedlora.config import RunConfig, to_dict
from sfedlora.core.metrics import personal
from sfedlora.core.state import State, payload_bytes
from sfedlora.errors import SfedloraError, voided
from sfedlora.flower.merges import MergeLog
from sfedlora.flower.registry import register
from sfedlora.flower.settings import ServerSettings
from sfedlora.flower.strategy import MethodStrategy
from sfedlora.flower.wire import (
    check_upload,
    expected_upload,
    from_record,
    parse_eval,
    parse_samples,
    parse_stats,
    timings,
    to_record,
)
from sfedlora.runtime import rundir
from sfedlora.runtime.protocol import Exchange, Server, known_start
from sfedlora.runtime.resolve import Resolved, check, resolve
from sfedlora.runtime.rounds import Reply, run_rounds
from sfedlora.runtime.runlog import RunLog

FIRST_TIMEOUT, AUTO_FACTOR, AUTO_MIN = 600.0, 4.0, 60.0


class FlowerRun:
    def __init__(self, cfg: RunConfig, out_dir: Path, settings: ServerSettings | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.cfg, self.out_dir, self.settings, self.echo = cfg, Path(out_dir), settings or ServerSettings(), echo
        self.method = check(cfg)  # fail fast on method / init / rank errors
        if cfg.lora.scaling == "adaptive" and cfg.lora.adaptive == "cumulative":
            raise SfedloraError("lora.adaptive=cumulative needs every client's A at init on the server, which a Flower "
                                "server never holds: use lora.adaptive=first, or `sfedlora run`")
        if cfg.eval.clients:
            raise SfedloraError("eval.clients samples the clients the in-process runner evaluates; a Flower run "
                                "evaluates every node: use eval.clients=0, or `sfedlora run`")
        if cfg.keep_round_adapters:
            raise SfedloraError("keep_round_adapters keeps every client's adapters per round, which a Flower server "
                                "never holds (each node keeps its client's final adapters): use `sfedlora run`")
        self.cfg_json = json.dumps(to_dict(cfg), sort_keys=True)
        self.key = uuid.uuid4().hex  # nodes keep this run's client state under it: no run sees another's
        self.round_trips: list[float] = []  # of every exchange so far
        self.waited = 0.0  # the last exchange's timeout
        self.missing: list[int] = []  # the last exchange's recipients that did not reply
        self.merges = MergeLog(self.method, cfg.fed.clients)  # FLoRA: what each node has still to merge

    def timeout(self) -> float:
        """How long this exchange waits for replies: --round-timeout where given; else (auto) FIRST_TIMEOUT for
        the first exchange (it includes each node's set-up: data, model) and then AUTO_FACTOR times the
        slowest exchange so far, at least AUTO_MIN seconds: a dead node costs the first exchange's wait, then
        a few rounds' time per round, not 10 minutes each."""
        if self.settings.round_timeout > 0:
            return self.settings.round_timeout
        if not self.round_trips:
            return FIRST_TIMEOUT
        return max(AUTO_MIN, AUTO_FACTOR * max(self.round_trips))

    # ---- registration -------------------------------------------------------------------------------
    def _register(self, grid: Any) -> None:
        f = self.cfg.fed
        start = f.dp_clipping_norm > 0 or f.server_optimizer != "none"  # the server needs what clients start from
        reg = register(grid, f.clients, self.cfg_json, self.settings.node_wait, self.timeout(),
                       self.cfg.lora.rank if start else 0, self.echo)
        self.node_of, self.partition_of, self.infos = reg.node_of, reg.partition_of, reg.infos
        self.schema, self.initial = reg.schema, reg.initial
        self.sizes = [int(self.infos[p]["n_train"]) for p in range(self.cfg.fed.clients)]
        self.descriptions = [json.loads(str(self.infos[p]["description"])) | {"client": p}
                             for p in range(self.cfg.fed.clients)]

    def _describe(self) -> Resolved:
        """The run description: the method's resolution from the registered sizes, and what the nodes found at
        set-up (device and precision: the value if every node agrees, else one per partition)."""
        found = [json.loads(str(self.infos[p]["found"])) for p in range(self.cfg.fed.clients)]
        merged: dict[str, Any] = {k: v if all(f[k] == v for f in found) else [f[k] for f in found]
                                  for k, v in found[0].items()}
        if found and "data_counts" in found[0]:  # the data read is every node's; what each encoded is its own
            per_node = [f["data_counts"] for f in found]
            merged["data_counts"] = {**per_node[0], **{k: sum(int(n.get(k, 0)) for n in per_node)
                                                       for k in ("encoded", "cut_to_max_length")}}
        sizes = [{k: int(d[k]) for k in ("train", "val", "test")} for d in self.descriptions]
        return replace(resolve(self.cfg, self.method, self.sizes), **merged, sizes=sizes, engine="flower",
                       extra={"run_key": self.key})

    # ---- one exchange -------------------------------------------------------------------------------
    def _exchange(self, grid: Any, rnd: int, evaluate: bool, members: list[int],
                  final: bool = False) -> tuple[dict[int, Any], float, int]:
        """Send the round's messages (the latest update to every recipient) and collect the replies by
        partition; also returns how long that took and the bytes the messages carried."""
        from flwr.app import ConfigRecord

        everyone = list(range(self.cfg.fed.clients))
        recipients = everyone if evaluate else members
        conf = ConfigRecord({
            "run": self.cfg_json, "run_key": self.key, "init": self.resolved.init,
            "ranks": json.dumps(self.resolved.ranks), "gammas": json.dumps([self.server.gamma(p) for p in everyone]),
            "round": rnd, "evaluate": evaluate,
            "participants": json.dumps([self.node_of[p] for p in members]),
            "recipients": json.dumps([self.node_of[p] for p in recipients]),
        })
        latest = self.server.latest
        arrays = to_record(latest)
        if final:
            messages = list(self.strategy.configure_evaluate(rnd, arrays, conf, grid))
        else:
            messages = list(self.strategy.configure_train(rnd, arrays, conf, grid))
        wire = payload_bytes(latest) * len(messages)
        if self.method.merges_into_base:  # FLoRA: what each node has not merged into its base
            wire += sum(self.merges.attach(m.content, self.partition_of[m.metadata.dst_node_id]) for m in messages)
        t0 = time.perf_counter()
        self.waited = self.timeout()
        replies = list(grid.send_and_receive(messages, timeout=self.waited))
        elapsed = time.perf_counter() - t0
        by_partition = {self.partition_of[r.metadata.src_node_id]: r for r in replies
                        if r.metadata.src_node_id in self.partition_of}
        for p, r in by_partition.items() if self.method.merges_into_base else ():
            if not r.has_error() and "report" in r.content:
                self.merges.heard(p, r.content["report"])
        self.missing = [p for p in recipients if p not in by_partition]
        # how long a round takes: the exchange's time, or where some node never replied (the exchange then
        # lasted the whole timeout), the longest time a replying node spent on it
        self.round_trips.append(elapsed if not self.missing else timings(by_partition)["compute_s"])
        return by_partition, elapsed, wire

    def _evaluation(self, replies: dict[int, Any]) -> dict[str, Any] | None:
        rows: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        self.samples: dict[int, list[dict[str, str]]] = {}
        clients: list[int] = []
        for p in range(self.cfg.fed.clients):
            r = replies.get(p)
            parsed = None
            if r is not None and not r.has_error() and "report" in r.content and "eval" in r.content["report"]:
                sizes = self.descriptions[p]  # the split sizes it registered
                parsed = parse_eval(r.content["report"]["eval"], {s: int(sizes[s]) for s in rows})
            if r is not None and r.has_error():
                voided(str(r.error.reason), f"client {p}'s evaluation")
            if parsed is None:
                self.echo(f"  client {p}: no valid evaluation in its reply"
                          + (f" ({r.error.reason})" if r is not None and r.has_error() else ""))
                continue
            for split in rows:
                rows[split].append(parsed[split])
            clients.append(p)
            report = replies[p].content["report"]  # parsed: it replied
            shown = parse_samples(report["samples"] if "samples" in report else "[]", self.cfg.eval.samples)
            if shown:  # its completions of its fixed prompts; malformed ones are left out, the metrics kept
                self.samples[p] = shown
        if not clients:
            return None
        ev: dict[str, Any] = {"personal": personal(rows)}
        if len(clients) < self.cfg.fed.clients:  # which rows are whose, where some are missing
            ev["evaluated_clients"] = clients
        return ev

    def _accept(self, rnd: int, members: list[int], replies: dict[int, Any]) -> Exchange:
        """Protocol step 3 on the server: every participant's reply checked (wire.check_upload) or its own
        report that its round was not usable."""
        ex = Exchange(selected=members)
        for p in members:
            r = replies.get(p)
            reason, upload = None, None
            if r is None:
                reason = f"no reply within {self.waited:.0f} s"
            elif r.has_error():
                voided(str(r.error.reason), f"round {rnd}: client {p}")
                reason = f"client error: {r.error.reason}"
            elif "report" in r.content and "excluded" in r.content["report"]:
                reason = str(r.content["report"]["excluded"])
            else:
                c = r.content
                if "upload" in c:
                    try:
                        upload = from_record(c["upload"])
                    except Exception as exc:  # a hostile reply may not even deserialise
                        reason = f"undecodable upload ({type(exc).__name__})"
                n_examples = c["metrics"].get("num-examples") if "metrics" in c else None
                stats = c["report"].get("stats") if "report" in c else None
                expected = expected_upload(self.method, self.schema, self.resolved.ranks[p], self.resolved.gammas[p],
                                           rnd)
                reason = reason or check_upload(upload, expected, n_examples, self.sizes[p], stats)
            parsed = None if reason or r is None else parse_stats(r.content["report"]["stats"])
            if reason is None and upload is not None and parsed is not None:
                ex.uploads[p], ex.stats[p] = upload, parsed
            else:
                ex.excluded.append({"client": p, "reason": reason})
                self.echo(f"  round {rnd} excludes client {p}: {reason}")
        return ex

    # ---- the transport of the round loop (runtime.rounds): Flower messages ---------------------------
    piggyback = True  # a deployment starts a process per message: an evaluation goes with the next round's

    def exchange(self, rnd: int, selected: list[int], evaluate: int | None) -> Reply:
        """One message to every recipient (the participants; everyone when the previous round is evaluated),
        and their replies checked (step 3 on the server). Past the last round, the final `evaluate` message."""
        final = rnd > self.cfg.fed.rounds
        replies, elapsed, wire = self._exchange(self.grid, rnd, evaluate is not None, selected, final)
        times = timings(replies)
        flower = {"round_trip_s": elapsed, "wire_bytes_down": wire, **times, "timeout_s": self.waited,
                  "no_reply": self.missing}  # clients that did not reply in time: a partial round
        reply = Reply(Exchange(selected=selected), t_train=times["train_s"], t_eval=times["eval_s"],
                      extra={"flower": flower})
        if evaluate is not None:
            reply.ev, reply.samples = self._evaluation(replies), self.samples
        if not final:
            reply.exchange = self._accept(rnd, selected, replies)
        return reply

    def aggregate(self, rnd: int, exchange: Exchange) -> State:
        """Step 5 through the same Server as in process (server-side DP and a server optimizer included)."""
        update = self.server.aggregate(rnd, exchange)
        if self.method.merges_into_base:  # FLoRA: every node merges it (and restarts), at its next message
            self.merges.add(rnd, update)
        return update

    def adopted(self, rnd: int, update: State, exchange: Exchange) -> None:
        return None  # a Flower server never holds the clients' states

    def notes(self) -> dict[str, Any]:
        return {}

    def recorded(self, record: dict[str, Any], log: RunLog) -> None:
        return None

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, grid: Any) -> dict[str, Any]:
        cfg = self.cfg
        self.grid = grid
        self._register(grid)
        self.resolved = self._describe()
        self.server = Server(cfg, self.method, self.resolved)
        self.server.initial = known_start(self.initial, self.resolved.init)  # what the nodes reported, where known
        nodes = "  nodes: " + ", ".join(f"partition {p} -> node {n}" for p, n in sorted(self.node_of.items()))
        log = RunLog(self.out_dir, cfg, self.resolved, self.descriptions, f"{self.method.name} on Flower", self.echo,
                     also=[nodes])
        self.strategy = MethodStrategy(self.method, {self.node_of[p]: self.server.weights[p] for p in self.node_of})
        run_rounds(self.server, self, log, 0 if cfg.eval.initial else 1, cfg.fed.rounds, cfg.eval.every)
        rundir.save_server(self.out_dir, self.server.latest, self.resolved)
        summary = log.finish(self.method.name)
        log.close()
        return summary
