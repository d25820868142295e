"""One federated client on one Flower node: its partition, the base model with adapters, and its state.

The state a client keeps between rounds (its adapters, including the private factors the method never
uploads, optimizer state, data order) lives in `context.state` and is also written to
`<node-dir>/<run-key>/client-<partition>.pt` after every message, so a restarted SuperNode continues
from the file. A process keeps its Node across messages (the simulation engine reuses workers); a
deployment starts one process per message, so a Node is built per message there: data, tokenizer and
model come from caches, nothing is converted again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from sfedlora.adapters.inject import inject_adapters
from sfedlora.client import local as client
from sfedlora.config import RunConfig, to_dict
from sfedlora.data.cache import cache_dir
from sfedlora.data.partition import ClientData, describe, make_clients
from sfedlora.data.sources import load_task
from sfedlora.errors import SfedloraError
from sfedlora.flower.wire import schema_of
from sfedlora.methods import get_method
from sfedlora.runtime import checkpoint
from sfedlora.runtime.models import load_model
from sfedlora.runtime.resolve import resolve_device, resolve_precision

State = dict[str, torch.Tensor]


def node_dir(node_config: Any) -> Path:
    """Where a node writes its clients' state: node-config `node-dir`, else the sfedlora cache."""
    given = node_config.get("node-dir") if node_config else None
    return Path(str(given)).expanduser() if given else cache_dir("nodes")


class Node:
    """Client `partition` of a run, as one Flower node sees it."""

    def __init__(self, cfg: RunConfig, partition: int, num_partitions: int, cache: Path | None = None) -> None:
        if num_partitions != cfg.fed.clients:
            raise SfedloraError(f"this node was started with num-partitions={num_partitions} but the run has "
                                f"fed.clients={cfg.fed.clients}")
        if not 0 <= partition < num_partitions:
            raise SfedloraError(f"partition-id {partition} is outside 0..{num_partitions - 1}")
        t0 = time.perf_counter()
        self.cfg, self.partition = cfg, partition
        self.method = get_method(cfg.fed.method)
        self.device = resolve_device(cfg.model.device)
        self.task, self.label_names, self.data, self.description = self._partition(cfg, partition, cache)
        torch.manual_seed(cfg.seed)  # as the in-process runner: the same task head initialisation
        self.precision = resolve_precision(cfg.model.precision, self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model, self.tok = load_model(cfg.model.name, self.task, max(2, len(self.label_names)), dtype)
        self.targets = inject_adapters(self.model, cfg.lora.targets, cfg.lora.dropout,
                                       head=self.task == "classification")
        self.model.to(self.device)
        self.encoded = client.encode(self.data, self.task, self.tok, cfg, partition)
        self.setup_s = time.perf_counter() - t0

    @staticmethod
    def _partition(cfg: RunConfig, partition: int, cache: Path | None) -> tuple[str, list[str], ClientData, dict]:
        """This node's share of the task: drawn once (as the in-process runner draws all clients), then read
        from `cache` (a deployment builds a Node per message; the draw costs seconds, the read milliseconds)."""
        ident = json.dumps({"data": to_dict(cfg)["data"], "seed": cfg.seed, "clients": cfg.fed.clients}, sort_keys=True)
        digest = hashlib.sha1(ident.encode()).hexdigest()[:16]
        path = None if cache is None else cache / f"partition-{digest}-{partition}.json"
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            return (saved["task"], saved["label_names"], ClientData(saved["train"], saved["val"], saved["test"]),
                    saved["description"])
        task_data = load_task(cfg.data, cfg.seed)
        data = make_clients(task_data.records, cfg.fed.clients, cfg.data, cfg.seed)[partition]
        key = "label" if task_data.task == "classification" else (
            cfg.data.partition_by if cfg.data.partition_by in task_data.records[0] else cfg.data.category_field)
        description = describe([data], key, task_data.label_names or None)[0] | {"client": partition}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"task": task_data.task, "label_names": task_data.label_names,
                                       "train": data.train, "val": data.val, "test": data.test,
                                       "description": description}))
            os.replace(tmp, path)
        return task_data.task, task_data.label_names, data, description

    # ---- the client's state -------------------------------------------------------------------------
    def fresh(self, init: str, ranks: list[int]) -> dict[str, Any]:
        c = self.partition
        return {"adapters": client.fresh_state(self.model, self.cfg, init, c, ranks[c], max(ranks)),
                "opt": {}, "sampler": client.sampler(self.cfg, c, self.data.n_train), "round": 0}

    def schema(self) -> str:
        """This node's adapter shapes at rank 1, for the server's consensus (JSON, sorted keys)."""
        return json.dumps(schema_of(client.fresh_state(self.model, self.cfg, "shared", 0, 1, 1)), sort_keys=True)

    @staticmethod
    def file(directory: Path, run_key: str, partition: int) -> Path:
        return directory / run_key / f"client-{partition}.pt"

    @staticmethod
    def pack(state: dict[str, Any]) -> bytes:
        sm = state["sampler"]
        buf = io.BytesIO()
        torch.save({"opt": state["opt"], "sampler": (sm.rng.getstate(), sm.order, sm.pos, sm.epoch),
                    "round": state["round"]}, buf)
        return buf.getvalue()

    def unpack(self, adapters: State, blob: bytes) -> dict[str, Any]:
        extra = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        sm = client.sampler(self.cfg, self.partition, self.data.n_train)
        rng_state, sm.order, sm.pos, sm.epoch = extra["sampler"]
        sm.rng.setstate(rng_state)
        return {"adapters": adapters, "opt": extra["opt"], "sampler": sm, "round": extra["round"]}

    def save_file(self, path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_save({"adapters": state["adapters"], "extra": self.pack(state),
                                "targets": self.targets}, path)

    def load_file(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return self.unpack(saved["adapters"], saved["extra"])

    # ---- what a message asks for --------------------------------------------------------------------
    def step(self, state: dict[str, Any], update: State, rnd: int, gamma: float, evaluate: bool,
             train: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Download the server's update (if any), evaluate (if asked: the previous round's personalised
        evaluation), then train round `rnd` (if this client takes part). Returns the new state and the
        reply's fields: upload, stats, eval rows and timings."""
        reply: dict[str, Any] = {}
        if update:
            state = {**state, "adapters": self.method.download(state["adapters"], update, gamma, rnd - 1)}
        t0 = time.perf_counter()
        if evaluate:
            rows = client.evaluate_clients(self.model, self.tok, self.task, self.cfg, [state["adapters"]], [gamma],
                                           [self.encoded], self.device)
            reply["eval"] = {split: rows[split][0] for split in ("val", "test")}
        t1 = time.perf_counter()
        if train:
            before = state
            new, opt, stats = client.train_clients(
                self.model, self.tok, self.task, self.cfg, self.method.trained(rnd), [state["adapters"]], [gamma],
                [state["opt"]], [state["sampler"]], [self.encoded.train], self.device)
            state = {**state, "adapters": new[0], "opt": opt[0], "round": rnd}
            reply["upload"] = self.method.upload(state["adapters"], gamma, rnd)
            reply["stats"] = stats[0]
            finite = all(bool(torch.isfinite(v).all()) for v in state["adapters"].values())
            if not (finite and torch.isfinite(torch.tensor(stats[0]["loss"]))):
                # As the in-process runner: a non-finite client goes back to its state before the round;
                # the server rejects its upload and says why.
                state = {**before, "sampler": state["sampler"]}
        reply["eval_s"], reply["train_s"] = t1 - t0, time.perf_counter() - t1
        return state, reply


_CACHE: dict[tuple[str, int], Node] = {}


def get_node(cfg_json: str, cfg: RunConfig, partition: int, num_partitions: int, cache: Path | None = None) -> Node:
    """The process's Node for this run and partition (one model per process; built on first use)."""
    key = (cfg_json, partition)
    if key not in _CACHE:
        _CACHE.clear()  # a worker that moves to another partition or run drops the old one
        _CACHE[key] = Node(cfg, partition, num_partitions, cache)
    else:
        _CACHE[key].setup_s = 0.0
    return _CACHE[key]


def threads_per_node() -> None:
    """Several nodes on one machine share its cores: honour SFEDLORA_NODE_THREADS if set."""
    n = os.environ.get("SFEDLORA_NODE_THREADS")
    if n:
        torch.set_num_threads(int(n))
