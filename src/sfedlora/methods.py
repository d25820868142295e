"""Federated LoRA methods. Each is a named class that answers three questions:
which factors train in round t, which are uploaded, and how the server combines them.

Factor kinds are 'A' (lora_A), 'B' (lora_B) and 'head' (a trainable task head, trained and
averaged by every method). Rounds are numbered from 1. The arithmetic is in sfedlora.aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from sfedlora.aggregate import select, weighted_mean
from sfedlora.errors import SfedloraError

State = dict[str, torch.Tensor]
AB_HEAD = frozenset({"A", "B", "head"})


class FederatedMethod:
    """FedAvg over the uploaded factors; leaf classes override only what differs."""

    name: ClassVar[str]
    citation: ClassVar[str]
    default_scaling: ClassVar[str] = "lora"
    default_init: ClassVar[str] = "shared"
    requires_shared_init: ClassVar[bool] = False

    def trained(self, rnd: int) -> frozenset[str]:
        """Factor kinds that receive gradient updates in round `rnd`."""
        return AB_HEAD

    def uploaded(self, rnd: int) -> frozenset[str]:
        """Factor kinds each client sends to the server after round `rnd`."""
        return self.trained(rnd)

    def aggregate(self, uploads: Sequence[State], weights: Sequence[float], rnd: int) -> State:
        """The server's combination of the uploads: their weighted mean."""
        return weighted_mean(uploads, weights)

    def download(self, client: State, update: State, rnd: int) -> State:
        """A client's state after receiving the server's update: uploaded factors are replaced."""
        return {**client, **update}

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

    def trained(self, rnd: int) -> frozenset[str]:
        return frozenset({"B", "head"})


class FedSALoRA(FederatedMethod):
    """FedSA-LoRA: A and B train, only A is averaged; each client keeps its own B.
    Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025."""

    name = "fedsa-lora"
    citation = "Guo et al., Selective Aggregation for Low-Rank Adaptation in Federated Learning, ICLR 2025"
    default_init = "independent"

    def uploaded(self, rnd: int) -> frozenset[str]:
        return frozenset({"A", "head"})


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
    Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA", NeurIPS 2025."""

    name = "rolora"
    citation = "Chen et al., Robust Federated Finetuning of LLMs via Alternating Optimization of LoRA, NeurIPS 2025"

    def trained(self, rnd: int) -> frozenset[str]:
        return frozenset({"B", "head"}) if rnd % 2 == 1 else frozenset({"A", "head"})


METHODS: dict[str, type[FederatedMethod]] = {
    cls.name: cls for cls in (FedIT, FFALoRA, FedSALoRA, FedSArsLoRA, SFedLoRA, RoLoRA)
}


def get_method(name: str) -> FederatedMethod:
    if name not in METHODS:
        raise SfedloraError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["FederatedMethod", "METHODS", "get_method", "select"]
