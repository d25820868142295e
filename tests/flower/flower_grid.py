"""An in-process Flower Grid for tests: every node is a Context, and a message is answered by calling
the ClientApp on it directly (no SuperLink, no processes). `tamper(partition, reply, message)` may
rewrite or drop (None) a node's reply; a ClientApp exception becomes an error reply, as in Flower."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(self, client_app, n_nodes: int, node_dir: str,
                 tamper: Callable[[int, Message, Message], Message | None] | None = None) -> None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # set by Flower's runtime
        self.client_app = client_app
        self.contexts = {
            1000 + p: Context(run_id=1, node_id=1000 + p, state=RecordDict(), run_config={},
                              node_config={"partition-id": p, "num-partitions": n_nodes, "node-dir": node_dir})
            for p in range(n_nodes)}
        self.tamper = tamper
        self.sent: list[Message] = []

    def set_run(self, run_id: int) -> None:
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node  # normally set by the SuperNode
            if self.tamper is not None:
                reply = self.tamper(node - 1000, reply, msg)
            if reply is not None:
                replies.append(reply)
        return replies


def node_state(node_root, out, partition: int) -> dict:
    """The final adapters a node kept for the run in `out` (under its run key, from its config.yaml)."""
    import yaml

    from sfedlora.runtime import statefile
    from sfedlora.runtime.statefile import node_file

    key = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["run_key"]
    return statefile.load(node_file(node_root, key, partition))["adapters"]


def node_states(node_root, out, n: int) -> list:
    return [node_state(node_root, out, p) for p in range(n)]

