"""The Flower ClientApp: the client step (client.step, through flower/node.py) behind Flower's Message API.

Message types (sent by sfedlora's ServerApp):
  query     register: partition id, data sizes, partition description, adapter schema
  train     download the server's update, optionally evaluate (the previous round), then train this
            round if the node takes part, and upload what the method uploads (FLoRA: first merge the rounds'
            updates the message carries as `merge-<t>` that the node has not merged yet)
  evaluate  download the final update, evaluate the last round, keep the final adapters

The run configuration comes in every message (the server's copy is the only one); the partition comes
from the node's `--node-config` (partition-id, num-partitions, and optionally node-dir).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sfedlora.config import config_from_dict
from sfedlora.flower.merges import received
from sfedlora.flower.node import Node, get_node, node_dir, threads_per_node
from sfedlora.flower.wire import from_record, to_record
from sfedlora.runtime import statefile
from sfedlora.runtime.statefile import node_file

app = ClientApp()


def _node(msg: Message, context: Context) -> tuple[Node, dict[str, Any]]:
    conf = dict(msg.content["config"])
    cfg_json = str(conf["run"])
    cfg = config_from_dict(json.loads(cfg_json))
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise ValueError("start the SuperNode with --node-config 'partition-id=<i> num-partitions=<n>'")
    threads_per_node()
    cache = node_dir(nc) / "partitions"
    return get_node(cfg_json, cfg, int(nc["partition-id"]), int(nc["num-partitions"]), cache), conf


@app.query()
def query(msg: Message, context: Context) -> Message:
    node, conf = _node(msg, context)
    info = ConfigRecord({"partition": node.partition, "n_train": node.data.n_train,
                         "description": json.dumps(node.description), "schema": node.schema(),
                         "found": json.dumps(node.found)})
    content = RecordDict({"info": info})
    rank = int(conf.get("initial_rank", 0))
    if rank:  # server-side DP, a server optimizer: a client's fresh adapters with a shared init (the server keeps
        # what every client starts from: runtime.protocol.known_start)
        content["initial"] = to_record(node.fresh("shared", [rank] * node.cfg.fed.clients)["adapters"])
    return Message(content, reply_to=msg)


def _blob(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"this node's saved client state is not bytes but {type(value).__name__}")
    return value


def _load_state(node: Node, context: Context, path: Path, init: str, ranks: list[int]) -> dict[str, Any]:
    """context.state first; after a SuperNode restart, its file `path` in the node directory; else fresh adapters."""
    if "client" in context.state:
        return node.unpack(_blob(context.state["client"]["state"]))
    saved = node.load_file(path)
    return saved if saved is not None else node.fresh(init, ranks)


def _step(msg: Message, context: Context) -> Message:
    node, conf = _node(msg, context)
    init, ranks = str(conf["init"]), json.loads(str(conf["ranks"]))
    path = node_file(node_dir(context.node_config), str(conf["run_key"]), node.partition)
    state = _load_state(node, context, path, init, ranks)
    update = from_record(msg.content["update"]) if "update" in msg.content else {}
    sent = json.loads(str(conf["gammas"]))[node.partition]  # a number, or one per module (adaptive scaling)
    gamma = {str(m): float(g) for m, g in sent.items()} if isinstance(sent, dict) else float(sent)
    base, merges = received(msg.content)  # FLoRA: what this node has not merged into its base yet
    state, reply = node.step(state, update, int(conf["round"]), gamma, bool(conf["evaluate"]), bool(conf["train"]),
                             merges, lambda t: node.fresh_adapters(init, ranks, t), base)
    if msg.metadata.message_type == "evaluate":  # the run's last message: keep the model, drop the working state
        node.keep_result(path, state)
        if "client" in context.state:
            del context.state["client"]
    else:
        blob = node.pack(state)  # once, for context.state and for the node directory
        context.state["client"] = ConfigRecord({"state": blob})
        statefile.write(path, blob)
    content = RecordDict({"metrics": MetricRecord({"num-examples": node.data.n_train, "setup_s": node.setup_s,
                                                   "train_s": reply["train_s"], "eval_s": reply["eval_s"]})})
    fields: dict[str, Any] = {}
    if "upload" in reply:
        content["upload"] = to_record(reply["upload"])
    if "stats" in reply:
        fields["stats"] = json.dumps(reply["stats"])
    if "excluded" in reply:  # its round was not usable (protocol step 3): it says why, and uploads nothing
        fields["excluded"] = str(reply["excluded"])
    if "eval" in reply:
        fields["eval"] = json.dumps(reply["eval"])
    if "samples" in reply:
        fields["samples"] = json.dumps(reply["samples"])
    if "merged_round" in reply:  # FLoRA: the last round whose update this node's base holds
        fields["merged_round"] = int(reply["merged_round"])
    content["report"] = ConfigRecord(fields)
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _step(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _step(msg, context)

