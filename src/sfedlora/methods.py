"""Federated LoRA methods. Each is a named class that answers three questions:
which factors train in round t, which are uploaded, and how the server combines them.

Factor kinds are 'A' (lora_A), 'B' (lora_B) and 'head' (a trainable task head, trained and
averaged by every method). Rounds are numbered from 1. The arithmetic is in sfedlora.aggregate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from sfedlora.aggregate import normalise, select, weighted_mean
from sfedlora.errors import SfedloraError
from sfedlora.hetero import overlay, rank_of, rank_partitioned_mean, truncate_state, zero_padded_mean
from sfedlora.inject import factor_kind

State = dict[str, torch.Tensor]
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

    def download(self, client: State, update: State, gamma: float, rnd: int) -> State:
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

    def global_delta(self, update: State, clients: Sequence[State], gammas: Sequence[float],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
        """The aggregated update per adapted module (d_out, d_in), for rank-collapse measurements: B A
        of the server's factors where it holds both, else sum_i w_i gamma_i B_i A_i over the clients."""
        modules = [k[: -len(".lora_A")] for k in clients[0] if factor_kind(k) == "A"]
        if all(f"{m}.lora_A" in update and f"{m}.lora_B" in update for m in modules):
            return {m: update[f"{m}.lora_B"] @ update[f"{m}.lora_A"] for m in modules}
        w = normalise(weights)
        return {m: functools.reduce(torch.add, [wi * g * c[f"{m}.lora_B"] @ c[f"{m}.lora_A"]
                                                for wi, g, c in zip(w, gammas, clients)]) for m in modules}

    def global_model(self, clients: Sequence[State], weights: Sequence[float]) -> State:
        """The model evaluated as 'global': the weighted mean of the clients' states after download.

        For FedIT, FFA-LoRA and RoLoRA (shared init) every client holds the same adapters after a
        download, so this is exactly the server's model. For the FedSA family it is the shared A with
        the clients' mean B: a reference point that no client holds.
        """
        return weighted_mean(clients, weights)


class FedIT(FederatedMethod):
    """FedIT: FedAvg of both LoRA factors.
    Zhang et al., "Towards Building the FederatedGPT: Federated Instruction Tuning", ICASSP 2024."""

    name = "fedit"
    citation = "Zhang et al., Towards Building the FederatedGPT: Federated Instruction Tuning, ICASSP 2024"


class FFALoRA(FederatedMethod):
    """FFA-LoRA: A frozen at a shared random init, only B trains and is averaged.
    Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024."""

    name = "ffa-lora"
    citation = "Sun et al., Improving LoRA in Privacy-preserving Federated Learning, ICLR 2024"
    requires_shared_init = True
    shared_init_reason = "freezes A, so every client must start from the same A"

    def trained(self, rnd: int) -> frozenset[str]:
        return frozenset({"B", "head"})


class FedSALoRA(FederatedMethod):
    """FedSA-LoRA: A and B train, only A is averaged; each client keeps its own B.
    Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025."""

    name = "fedsa-lora"
    citation = "Guo et al., Selective Aggregation for Low-Rank Adaptation in Federated Learning, ICLR 2025"
    default_init = "independent"
    heterogeneous_ranks = True
    rank_partitioned = True

    def uploaded(self, rnd: int) -> frozenset[str]:
        return frozenset({"A", "head"})

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        """Mean of A; with heterogeneous ranks, per rank partition the raFLoRA way (equal ranks: FedAvg)."""
        return rank_partitioned_mean(uploads, weights)


class FedSArsLoRA(FedSALoRA):
    """FedSA-LoRA aggregation with rsLoRA scaling alpha/sqrt(r).
    Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", arXiv 2312.03732."""

    name = "fedsa-rslora"
    citation = "FedSA-LoRA (Guo et al., ICLR 2025) with rsLoRA scaling (Kalajdzievski, arXiv 2312.03732)"
    default_scaling = "rslora"


class SFedLoRA(FedSALoRA):
    """SFed-LoRA: FedSA-LoRA aggregation with gamma = alpha * sqrt(N / r).
    "Stabilized Fine-Tuning with LoRA in Federated Learning: Mitigating the Side Effect of Client Size
    and Rank via the Scaling Factor", arXiv 2603.08058, Theorem 4.2."""

    name = "sfed-lora"
    citation = "Stabilized Federated LoRA (SFed-LoRA), arXiv 2603.08058, Theorem 4.2: gamma = alpha*sqrt(N/r)"
    default_scaling = "sfed"


class RoLoRA(FederatedMethod):
    """RoLoRA: alternating optimisation; B trains (and is averaged) in odd rounds, A in even rounds.
    Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA", NeurIPS 2025.
    Round 1 averages B while every client still holds its initial A, so the clients must share that A (as
    the paper's clients do): with independent A's the mean B would be paired with A's it was not trained on."""

    name = "rolora"
    citation = "Chen et al., Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA, NeurIPS 2025"
    requires_shared_init = True
    shared_init_reason = ("averages B in round 1 while each client keeps its own A, so every client must start "
                          "from the same A")

    def trained(self, rnd: int) -> frozenset[str]:
        return frozenset({"B", "head"}) if rnd % 2 == 1 else frozenset({"A", "head"})


class HetLoRA(FederatedMethod):
    """Heterogeneous ranks by zero-padding: A and B padded to r_max, averaged over all clients, cut back
    to r_i. Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
    EMNLP 2024 (its aggregation; without its local rank self-pruning)."""

    name = "hetlora"
    citation = "Cho et al., Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models, EMNLP 2024"
    heterogeneous_ranks = True

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        return zero_padded_mean(uploads, weights)


class RaFLoRA(FederatedMethod):
    """Rank-partitioned aggregation: partition [l, h) averaged over the clients with r_i >= h, weights
    renormalised over them. Wu et al., "Preventing Rank Collapse in Federated Low-Rank Adaptation with
    Client Heterogeneity", arXiv 2602.13486."""

    name = "raflora"
    citation = ("Wu et al., Preventing Rank Collapse in Federated Low-Rank Adaptation with Client Heterogeneity, "
                "arXiv 2602.13486")
    heterogeneous_ranks = True
    rank_partitioned = True

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        return rank_partitioned_mean(uploads, weights)


class FLoRA(FederatedMethod):
    """Stacking: clients upload gamma_i B_i and A_i; the server stacks them into rank sum(r_i), so that
    dW = sum_i w_i gamma_i B_i A_i exactly, merges dW into W0, and every client restarts from fresh
    adapters. Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
    Low-Rank Adaptations", NeurIPS 2024."""

    name = "flora"
    citation = ("Wang et al., FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank "
                "Adaptations, NeurIPS 2024")
    heterogeneous_ranks = True
    merges_into_base = True

    def upload(self, client: State, gamma: float, rnd: int) -> State:
        return {k: (gamma * v if factor_kind(k) == "B" else v) for k, v in client.items()}

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        """The stacked modules every client receives: A_i stacked by rows, w_i gamma_i B_i by columns."""
        w = normalise(weights)
        out: State = weighted_mean([select(u, {"head"}) for u in uploads], w) if select(uploads[0], {"head"}) else {}
        for key in uploads[0]:
            if factor_kind(key) != "A":
                continue
            m = key[: -len(".lora_A")]
            out[f"{m}.stack_A"] = torch.cat([u[f"{m}.lora_A"] for u in uploads], 0)  # (sum r_i, d_in)
            out[f"{m}.stack_B"] = torch.cat([wi * u[f"{m}.lora_B"] for wi, u in zip(w, uploads)], 1)  # (d_out, sum r_i)
        return out

    def merged(self, update: State) -> dict[str, torch.Tensor]:
        """dW = B_stack A_stack = sum_i w_i gamma_i B_i A_i, per module."""
        return {k[: -len(".stack_A")]: update[k[: -len("A")] + "B"] @ v for k, v in update.items()
                if k.endswith(".stack_A")}

    def download(self, client: State, update: State, gamma: float, rnd: int) -> State:
        return {**client, **select(update, {"head"})}  # the runner merges dW and re-initialises A, B

    def sent_to(self, update: State, rank: int) -> State:
        return update  # every client merges the whole stack, whatever its own rank

    def global_delta(self, update: State, clients: Sequence[State], gammas: Sequence[float],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
        return self.merged(update)


class FlexLoRA(FederatedMethod):
    """SVD redistribution: dW = sum_i w_i gamma_i B_i A_i, and client i gets the top-r_i singular
    factors of dW, split so that gamma_i B_i A_i is the best rank-r_i approximation of dW.
    Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
    Resources", NeurIPS 2024."""

    name = "flexlora"
    citation = ("Bai et al., Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client "
                "Resources, NeurIPS 2024")
    heterogeneous_ranks = True

    def upload(self, client: State, gamma: float, rnd: int) -> State:
        out = select(client, {"head"})
        for key in client:
            if factor_kind(key) == "A":
                m = key[: -len(".lora_A")]
                out[f"{m}.delta"] = gamma * client[f"{m}.lora_B"] @ client[key]  # (d_out, d_in)
        return out

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        out = weighted_mean(uploads, weights)  # heads and deltas: sum_i w_i gamma_i B_i A_i
        for key in [k for k in out if k.endswith(".delta")]:
            u, s, vh = torch.linalg.svd(out.pop(key).double(), full_matrices=False)
            m = key[: -len(".delta")]
            out[f"{m}.svd_U"], out[f"{m}.svd_S"], out[f"{m}.svd_Vh"] = u.float(), s.float(), vh.float()
        return out

    def sent_to(self, update: State, rank: int) -> State:
        """The top-`rank` singular factors of each module's dW (and the head)."""
        out = {}
        for k, v in update.items():
            part = k.rsplit(".", 1)[-1]
            out[k] = v[:, :rank] if part == "svd_U" else v[:rank] if part in ("svd_S", "svd_Vh") else v
        return out

    def download(self, client: State, update: State, gamma: float, rnd: int) -> State:
        r = rank_of(client)
        new = {**client, **{k: v for k, v in update.items() if not k.split(".")[-1].startswith("svd_")}}
        for key in [k for k in update if k.endswith(".svd_S")]:
            m = key[: -len(".svd_S")]
            root = update[key][:r].sqrt() / math.sqrt(gamma)  # gamma B A = U_r S_r Vh_r
            new[f"{m}.lora_B"] = update[f"{m}.svd_U"][:, :r] * root
            new[f"{m}.lora_A"] = root[:, None] * update[f"{m}.svd_Vh"][:r]
        return new

    def global_delta(self, update: State, clients: Sequence[State], gammas: Sequence[float],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
        modules = [k[: -len(".svd_S")] for k in update if k.endswith(".svd_S")]
        return {m: (update[f"{m}.svd_U"] * update[f"{m}.svd_S"]) @ update[f"{m}.svd_Vh"] for m in modules}


METHODS: dict[str, type[FederatedMethod]] = {
    cls.name: cls
    for cls in (FedIT, FFALoRA, FedSALoRA, FedSArsLoRA, SFedLoRA, RoLoRA, HetLoRA, RaFLoRA, FLoRA, FlexLoRA)
}


def get_method(name: str) -> FederatedMethod:
    if name not in METHODS:
        raise SfedloraError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["FederatedMethod", "METHODS", "get_method", "select"]
