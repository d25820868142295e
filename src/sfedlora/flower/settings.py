"""A Flower server's settings beyond the run config: read by the command line without Flower installed."""

from __future__ import annotations

from dataclasses import dataclass

from sfedlora.config.schema import opt


@dataclass
class ServerSettings:
    """A Flower server's settings beyond the run config (`sfedlora flower run|simulate|submit` options)."""

    round_timeout: float = opt(0.0, "seconds a round waits for replies; a node that misses it is left out of the round "
                               "and the round is flagged partial (0 = auto: 600 s for the first exchange, which "
                               "includes the nodes' set-up, then 4 x the slowest round so far, at least 60 s)")
    node_wait: float = opt(120.0, "seconds to wait for fed.clients nodes to connect")
