"""A trainable task head (e.g. BERT's `classifier`) stacked over C clients.

The head is not a LoRA factor: it is a small full layer that every method trains and averages
(FedAvg), as FedSA-LoRA and FFA-LoRA do for classification heads. Stacking it per client keeps
each client's head separate inside one batched forward.
"""

from __future__ import annotations

import torch
from torch import nn


class StackedHead(nn.Module):
    """weight (C, out, in) and bias (C, out), initialised from the wrapped layer's own init."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.init_weight = base_layer.weight.detach().float().clone()
        self.init_bias = (
            base_layer.bias.detach().float().clone() if base_layer.bias is not None else torch.zeros(self.out_features)
        )
        self.weight = nn.Parameter(self.init_weight.unsqueeze(0).clone())
        self.bias = nn.Parameter(self.init_bias.unsqueeze(0).clone())

    @property
    def n_clients(self) -> int:
        return int(self.weight.shape[0])

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.n_clients
        lead = x.shape[:-1]
        xs = x.reshape(c, -1, self.in_features).float()  # (C, n, in)
        out = torch.baddbmm(self.bias.unsqueeze(1), xs, self.weight.transpose(1, 2))  # (C, n, out)
        return out.reshape(*lead, self.out_features)
