"""Registration of a Flower run's nodes: wait (bounded) for one node per partition, ask each for its
partition, sizes, what its set-up found and its adapter schema, and keep the nodes that agree with the
majority's schema, one per partition. With server-side DP or a server optimizer, also the fresh adapters of a
shared init the nodes agree on."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfedlora.core.state import State
from sfedlora.errors import SfedloraError
from sfedlora.flower.wire import consensus, from_record


@dataclass
class Registration:
    node_of: dict[int, int]  # partition -> node id
    partition_of: dict[int, int]  # node id -> partition
    infos: dict[int, dict[str, Any]]  # partition -> what its node registered
    schema: dict[str, list[int]]  # the adapter shapes at rank 1 the nodes agree on
    initial: State = field(default_factory=dict)  # DP, server optimizer: fresh adapters of a shared init


def wait_for_nodes(grid: Any, n: int, node_wait: float) -> list[int]:
    deadline = time.monotonic() + node_wait
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if len(nodes) < n:
        raise SfedloraError(f"{len(nodes)} of the {n} nodes (fed.clients) connected within {node_wait:.0f} s")
    return nodes


def register(grid: Any, n: int, cfg_json: str, node_wait: float, timeout: float, initial_rank: int,
             echo: Callable[[str], None]) -> Registration:
    from flwr.app import ConfigRecord, Message, RecordDict

    nodes = wait_for_nodes(grid, n, node_wait)
    conf = ConfigRecord({"run": cfg_json, "initial_rank": initial_rank})
    messages = [Message(RecordDict({"config": conf}), dst_node_id=nid, message_type="query") for nid in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    infos: dict[int, dict[str, Any]] = {}
    for r in replies:
        nid = r.metadata.src_node_id
        if r.has_error():
            echo(f"  node {nid} failed to register: {r.error.reason}")
            continue
        try:
            info = dict(r.content["info"])
            info["partition"], info["n_train"] = int(info["partition"]), int(info["n_train"])
            infos[nid] = info
        except (KeyError, TypeError, ValueError) as exc:
            echo(f"  node {nid} sent a malformed registration ({exc}); ignored")
    agreed, odd = consensus([str(i["schema"]) for i in infos.values()]) if infos else ("{}", [])
    for pos in odd:
        nid = list(infos)[pos]
        echo(f"  node {nid} (partition {infos[nid]['partition']}) reports different adapter shapes; ignored")
    infos = {nid: i for pos, (nid, i) in enumerate(infos.items()) if pos not in odd}
    node_of: dict[int, int] = {}
    for nid, info in sorted(infos.items()):
        p = info["partition"]
        if p in node_of:
            echo(f"  node {nid} claims partition {p}, already taken by node {node_of[p]}; ignored")
            continue
        node_of[p] = nid
    missing = [p for p in range(n) if p not in node_of]
    if missing:
        raise SfedloraError(f"no usable node holds partition(s) {missing}: start one SuperNode per partition "
                            f"with --node-config 'partition-id=<i> num-partitions={n}'")
    reg = Registration(node_of=node_of, partition_of={nid: p for p, nid in node_of.items()},
                       infos={p: infos[node_of[p]] for p in node_of}, schema=json.loads(agreed))
    if initial_rank:
        initials = [r for r in replies if not r.has_error() and "initial" in r.content
                    and r.metadata.src_node_id in node_of.values()]
        digests = [hashlib.sha1(b"".join(a.data for a in r.content["initial"].values())).hexdigest() for r in initials]
        agreed_init, _ = consensus(digests)
        reg.initial = from_record(initials[digests.index(agreed_init)].content["initial"])
    return reg
