"""The round protocol both runners follow: select participants, local update, upload, aggregate, download,
record. Pure steps over states and messages; the in-process runner executes them batched, the Flower apps
over Flower messages."""

from __future__ import annotations

from typing import Any

from sfedlora.core.state import State, payload_bytes
from sfedlora.methods import FederatedMethod


def bytes_down(method: FederatedMethod, update: State, ranks: list[int]) -> int:
    """What the round's participants (of these ranks) download of its update, as fp32 values: each gets
    method.sent_to(update, its rank). Clients that did not take part are not counted."""
    return sum(payload_bytes(method.sent_to(update, r)) for r in ranks)


__all__ = ["bytes_down", "Any"]
