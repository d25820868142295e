"""FedSA-style methods: clients train A and B, only A is averaged, each client keeps its own B. They differ
in the scaling factor only: alpha/r (FedSA-LoRA), alpha/sqrt(r) (FedSA-rsLoRA), alpha*sqrt(N/r)
(SFed-LoRA)."""

from __future__ import annotations

from collections.abc import Sequence

from sfedlora.core.aggregate import rank_partitioned_mean
from sfedlora.core.state import State
from sfedlora.methods.base import FederatedMethod


class FedSALoRA(FederatedMethod):
    """FedSA-LoRA: A and B train, only A is averaged; each client keeps its own B.
    Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025."""

    name = "fedsa-lora"
    citation = "Guo et al., Selective Aggregation for Low-Rank Adaptation in Federated Learning, ICLR 2025"
    default_init = "independent"
    heterogeneous_ranks = True
    rank_partitioned = True
    dp_compatible = True
    adaptive_scaling = True

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

