"""One federated client on one Flower node: its partition, the base model with adapters, and its state.

The state a client keeps between rounds (its adapters, including the private factors the method never
uploads, optimizer state, data order) lives in `context.state` and is also written to
`<node-dir>/<run-key>/client-<partition>.safetensors` after every message, so a restarted SuperNode continues
from the file. A process keeps its Node across messages (the simulation engine reuses workers); a
deployment starts one process per message, so a Node is built per message there: data, tokenizer and
model come from caches, nothing is converted again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sfedlora.adapters.inject import set_merged
from sfedlora.client import local as client
from sfedlora.client.probe import set_attention
from sfedlora.client.step import Held, current, merge_sum, restarted
from sfedlora.client.step import step as client_step
from sfedlora.config import RunConfig
from sfedlora.core.scaling import Gamma
from sfedlora.data.cache import cache_dir
from sfedlora.errors import SfedloraError
from sfedlora.flower.wire import schema_of
from sfedlora.runtime import statefile
from sfedlora.runtime.setup import setup

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
        s = setup(cfg, partitions=[partition], cache=cache)  # the same set-up as the in-process runner's
        set_attention(s, measure=False)  # model.attention: sdpa or eager is set; auto keeps sdpa
        self.setup, self.method, self.model, self.tok, self.device = s, s.method, s.model, s.tok, s.device
        self.task, self.label_names, self.targets, self.found = s.task, s.label_names, s.targets, s.found()
        self.data, self.description = s.clients[partition], s.descriptions[partition]
        self.encoded = s.encoded[partition]
        self.setup_s = time.perf_counter() - t0

    # ---- the client's state -------------------------------------------------------------------------
    def fresh(self, init: str, ranks: list[int]) -> dict[str, Any]:
        """The client's state before its first round; `merged` (FLoRA): the sum of the updates merged into its base,
        up to round `merged_round`."""
        return {"adapters": self.fresh_adapters(init, ranks), "opt": {}, "round": 0, "merged": {}, "merged_round": 0,
                "sampler": client.sampler(self.cfg, self.partition, self.data.n_train)}

    def fresh_adapters(self, init: str, ranks: list[int], rnd: int = 0) -> State:
        """The client's fresh adapters (B = 0), as the in-process runner draws them; `rnd` > 0 re-draws (FLoRA)."""
        c = self.partition
        return client.fresh_state(self.model, self.cfg, init, c, ranks[c], max(ranks), rnd)

    def schema(self) -> str:
        """This node's adapter shapes at rank 1, for the server's consensus (JSON, sorted keys)."""
        return json.dumps(schema_of(client.fresh_state(self.model, self.cfg, "shared", 0, 1, 1)), sort_keys=True)

    @staticmethod
    def pack(state: dict[str, Any]) -> bytes:
        """The client's whole state as a state file's bytes (runtime.statefile: no pickle, checksummed)."""
        return statefile.dumps({"adapters": state["adapters"], "opt": state["opt"], "round": state["round"],
                                "sampler": state["sampler"].saved(), "merged": state["merged"],
                                "merged_round": state["merged_round"]})

    def unpack(self, blob: bytes) -> dict[str, Any]:
        saved = statefile.loads(blob)
        sm = client.sampler(self.cfg, self.partition, self.data.n_train).restore(saved["sampler"])
        return {"adapters": saved["adapters"], "opt": saved["opt"], "sampler": sm, "round": saved["round"],
                "merged": saved.get("merged", {}), "merged_round": saved.get("merged_round", 0)}

    def load_file(self, path: Path) -> dict[str, Any] | None:
        return self.unpack(path.read_bytes()) if path.exists() else None

    @staticmethod
    def keep_result(path: Path, state: dict[str, Any]) -> None:
        """At the end of a run the node keeps its client's final adapters and (FLoRA) what was merged into its base:
        its model; it drops the rest of its working state (optimizer state, data order)."""
        merged = {"merged": state["merged"]} if state["merged"] else {}
        statefile.save(path, {"adapters": state["adapters"], "round": state["round"], **merged})

    # ---- what a message asks for --------------------------------------------------------------------
    def step(self, state: dict[str, Any], update: State, rnd: int, gamma: Gamma, evaluate: bool, train: bool,
             merges: dict[int, State] | None = None, fresh: Callable[[int], State] | None = None,
             base: tuple[int, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The client step (client.step) of round `rnd`: download the server's update, evaluate (if asked: the
        previous round's personalised evaluation), then train, check and upload (if this client takes part).
        FLoRA first merges what its base lacks (`base`: the sum of the rounds up to one, `merges`: rounds by number;
        `fresh(t)`: its fresh adapters for round t); a base still short of round `rnd` - 1 (its saved state was
        lost) does nothing else this round. Returns the new state and the reply's fields: upload, stats, eval rows,
        timings."""
        if self.method.merges_into_base:
            assert fresh is not None
            state = self._merge(state, update, gamma, base, merges or {}, fresh)
            if state["merged_round"] != rnd - 1:
                return state, {"eval_s": 0.0, "train_s": 0.0, "merged_round": state["merged_round"], "excluded": (
                    f"its base holds the merged updates up to round {state['merged_round']}, not {rnd - 1} (its "
                    "saved state was lost or is older than the run's): it catches up with its next message")}
        held = Held(current(self.method, state["adapters"], update, gamma), state["opt"], state["sampler"])
        out = client_step(self.setup, rnd, [held], [held.adapters], [gamma], [self.encoded], evaluate, train)
        state = {**state, "adapters": held.adapters}
        reply: dict[str, Any] = {"eval_s": out.eval_s, "train_s": out.train_s}
        if evaluate:
            reply["eval"] = {split: rows[0] for split, rows in out.rows.items()}
            if out.samples is not None:  # its completions of its fixed sample prompts (eval.samples)
                reply["samples"] = out.samples[0]
        if train:
            done = out.trained[0]
            state = {**state, "adapters": done.held.adapters, "opt": done.held.opt, "round": rnd}
            reply["stats"] = done.stats
            if done.upload is None:  # its round was not usable: back to its state before it, and nothing to aggregate
                reply["excluded"] = done.excluded
            else:
                reply["upload"] = done.upload
        if self.method.merges_into_base:
            reply["merged_round"] = state["merged_round"]
        return state, reply

    def _merge(self, state: dict[str, Any], latest: State, gamma: Gamma, base: tuple[int, dict[str, Any]] | None,
               merges: dict[int, State], fresh: Callable[[int], State]) -> dict[str, Any]:
        """FLoRA: what this client's base lacks, in round order: the server's sum up to a round where it is behind
        that, then each following round's update (client.step.merge_sum, as the in-process runner merges); a round
        missing from the sequence stops it there. Having merged, it restarts from the last merged round's fresh
        adapters (client.step.restarted: each restart replaces the one before, so one is the same as one per
        round). Then the model's base is W0 plus the sum (a process new to the run starts from W0)."""
        merged, done = state["merged"], state["merged_round"]
        held = Held(state["adapters"], state["opt"], state["sampler"])
        start = done
        if base is not None and base[0] > done:
            merged, done = dict(base[1]), base[0]
        for t in sorted(t for t in merges if t > done):
            if t != done + 1:
                break
            merged, done = merge_sum(self.method, merged, merges[t]), t
        if done != start:
            held = restarted(self.method, held, latest, gamma, fresh(done))
        set_merged(self.model, merged)
        return {**state, "adapters": held.adapters, "opt": held.opt, "merged": merged, "merged_round": done}


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
