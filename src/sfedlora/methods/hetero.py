"""Methods for heterogeneous client ranks: zero-padding (HetLoRA), rank-partitioned averaging (raFLoRA),
stacking merged into the base (FLoRA), and SVD redistribution (FlexLoRA)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sfedlora.core.aggregate import normalise, rank_partitioned_mean, weighted_mean, zero_padded_mean
from sfedlora.core.state import State, factor_kind, rank_of, select
from sfedlora.methods.base import FederatedMethod


class HetLoRA(FederatedMethod):
    """Heterogeneous ranks by zero-padding: A and B padded to r_max, averaged over all clients, cut back
    to r_i. Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
    EMNLP 2024 (its aggregation; without its local rank self-pruning)."""

    name = "hetlora"
    citation = "Cho et al., Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models, EMNLP 2024"
    heterogeneous_ranks = True
    no_server_optimizer = "averages zero-padded factors whose rows each client fills to its own rank"

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
    no_server_optimizer = "averages each rank partition over a different set of clients"
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
    no_server_optimizer = "merges each round's stacked update into the base and restarts every adapter"
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
            out[f"{m}.stack_B"] = torch.cat([wi * u[f"{m}.lora_B"] for wi, u in zip(w, uploads, strict=True)],
                                            1)  # (d_out, sum r_i)
        return out

    def merged(self, update: State) -> dict[str, torch.Tensor]:
        """dW = B_stack A_stack = sum_i w_i gamma_i B_i A_i, per module."""
        return {k[: -len(".stack_A")]: update[k[: -len("A")] + "B"] @ v for k, v in update.items()
                if k.endswith(".stack_A")}

    def download(self, client: State, update: State, gamma: float) -> State:
        return {**client, **select(update, {"head"})}  # the runner merges dW and re-initialises A, B

    def sent_to(self, update: State, rank: int) -> State:
        return update  # every client merges the whole stack, whatever its own rank

    def global_delta(self, update: State, clients: Sequence[State] | None, gammas: Sequence[float],
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
    no_server_optimizer = "re-factorises the averaged dW for each client by SVD"

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

    def download(self, client: State, update: State, gamma: float) -> State:
        r = rank_of(client)
        new = {**client, **{k: v for k, v in update.items() if not k.split(".")[-1].startswith("svd_")}}
        for key in [k for k in update if k.endswith(".svd_S")]:
            m = key[: -len(".svd_S")]
            root = update[key][:r].sqrt() / math.sqrt(gamma)  # gamma B A = U_r S_r Vh_r
            new[f"{m}.lora_B"] = update[f"{m}.svd_U"][:, :r] * root
            new[f"{m}.lora_A"] = root[:, None] * update[f"{m}.svd_Vh"][:r]
        return new

    def global_delta(self, update: State, clients: Sequence[State] | None, gammas: Sequence[float],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
        modules = [k[: -len(".svd_S")] for k in update if k.endswith(".svd_S")]
        return {m: (update[f"{m}.svd_U"] * update[f"{m}.svd_S"]) @ update[f"{m}.svd_Vh"] for m in modules}

