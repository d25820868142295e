"""FedAvg-style methods: every client holds the same adapters after a round. FedIT averages A and B,
FFA-LoRA freezes a shared A and averages B, RoLoRA alternates between the two factors."""

from __future__ import annotations

from sfedlora.methods.base import FederatedMethod


class FedIT(FederatedMethod):
    """FedIT: FedAvg of both LoRA factors.
    Zhang et al., "Towards Building the FederatedGPT: Federated Instruction Tuning", ICASSP 2024."""

    name = "fedit"
    citation = "Zhang et al., Towards Building the FederatedGPT: Federated Instruction Tuning, ICASSP 2024"
    dp_compatible = True



class FFALoRA(FederatedMethod):
    """FFA-LoRA: A frozen at a shared random init, only B trains and is averaged.
    Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024."""

    name = "ffa-lora"
    citation = "Sun et al., Improving LoRA in Privacy-preserving Federated Learning, ICLR 2024"
    requires_shared_init = True
    shared_init_reason = "freezes A, so every client must start from the same A"
    dp_compatible = True

    def trained(self, rnd: int) -> frozenset[str]:
        return frozenset({"B", "head"})



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

