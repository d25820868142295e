"""The base of every federated LoRA method: FedAvg over the uploaded factors. A method answers three
questions: which factors train in round t, which are uploaded, and how the server combines them (plus what a
client keeps after the download). Leaf classes override only what differs.

Factor kinds are 'A' (lora_A), 'B' (lora_B) and 'head' (a trainable task head, trained and averaged by
every method). Rounds are numbered from 1. The arithmetic is in sfedlora.core.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import torch

from sfedlora.core.aggregate import normalise, weighted_mean
from sfedlora.core.state import State, factor_kind, overlay, rank_of, select, truncate_state

AB_HEAD = frozenset({"A", "B", "head"})


class FederatedMethod:
    """FedAvg over the uploaded factors; leaf classes override only what differs."""

    name: ClassVar[str]
    citation: ClassVar[str]
    default_scaling: ClassVar[str] = "lora"
    default_init: ClassVar[str] = "shared"
    requires_shared_init: ClassVar[bool] = False
    shared_init_reason: ClassVar[str] = ""  # why, where requires_shared_init
    heterogeneous_ranks: ClassVar[bool] = False  # can clients hold different ranks?
    rank_partitioned: ClassVar[bool] = False  # averages each rank partition over the clients that have it
    merges_into_base: ClassVar[bool] = False  # FLoRA: the update is added to W0, adapters restart
    adaptive_scaling: ClassVar[bool] = False  # lora.scaling=adaptive fits it (A averaged, B kept: the FedSA family)
    dp_compatible: ClassVar[bool] = False  # uploads the same factors every round (server-side DP can clip them)
    # why a server optimizer (core.server_opt) is not defined for it; empty: it acts on the aggregated factors
    no_server_optimizer: ClassVar[str] = ""

    def trained(self, rnd: int) -> frozenset[str]:
        """Factor kinds that receive gradient updates in round `rnd`."""
        return AB_HEAD

    def uploaded(self, rnd: int) -> frozenset[str]:
        """Factor kinds each client sends to the server after round `rnd`."""
        return self.trained(rnd)

    def upload(self, client: State, gamma: float, rnd: int) -> State:
        """What a client sends after round `rnd`: its factors of the uploaded kinds."""
        return select(client, self.uploaded(rnd))

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        """The server's combination of the uploads: their weighted mean."""
        return weighted_mean(uploads, weights)

    def download(self, client: State, update: State, gamma: float) -> State:
        """A client's state after receiving the server's update: uploaded factors are replaced, cut to the
        client's own rank where the update is wider; where it is narrower (heterogeneous ranks, partial
        participation) the client keeps its own further rows (hetero.overlay)."""
        return truncate_state(overlay(client, update), rank_of(client))

    def sent_to(self, update: State, rank: int) -> State:
        """What a client of rank `rank` receives of the round's update (its size is that client's share of
        the round's bytes_down): here the update cut to the client's rank."""
        return truncate_state(update, rank)

    def merged(self, update: State) -> dict[str, torch.Tensor]:
        """Per adapted module, the dW that methods merging into the base (merges_into_base) add to W0."""
        return {}

    def global_delta(self, update: State, clients: Sequence[State] | None, gammas: Sequence[float],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
        """The aggregated update per adapted module (d_out, d_in), for rank-collapse measurements: B A
        of the server's factors where it holds both, else sum_i w_i gamma_i B_i A_i over the clients
        (the clients' states after the download; none given: nothing can be said)."""
        keys = clients[0] if clients else update
        modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys if factor_kind(k) in ("A", "B")))
        if all(f"{m}.lora_A" in update and f"{m}.lora_B" in update for m in modules):
            return {m: update[f"{m}.lora_B"] @ update[f"{m}.lora_A"] for m in modules}
        if not clients:
            return {}
        w = normalise(weights)
        return {m: functools.reduce(torch.add, [wi * g * c[f"{m}.lora_B"] @ c[f"{m}.lora_A"]
                                                for wi, g, c in zip(w, gammas, clients, strict=True)]) for m in modules}

    def global_model(self, clients: Sequence[State], weights: Sequence[float]) -> State:
        """The model evaluated as 'global': the weighted mean of the clients' states after download.

        For FedIT, FFA-LoRA and RoLoRA (shared init) every client holds the same adapters after a
        download, so this is exactly the server's model. For the FedSA family it is the shared A with
        the clients' mean B: a reference point that no client holds.
        """
        return weighted_mean(clients, weights)

