"""A trainable task head (e.g. BERT's `classifier`) stacked over C clients.

The head is not a LoRA factor: it is a small full layer that every method trains and averages
(FedAvg), as FedSA-LoRA and FFA-LoRA do for classification heads. Stacking it per client keeps
each client's head separate inside one batched forward.
"""

from __future__ import annotations

import torch
from torch import nn


class StackedHead(nn.Module):
    """weight (C, out, in) and, if the wrapped layer has one, bias (C, out), initialised from the wrapped
    layer's own init. A head without bias (LLaMA's `score`) stays without one: a bias it never had would
    train, change its outputs and have nowhere to go in an export."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.init_weight = base_layer.weight.detach().float().clone()
        self.init_bias = None if base_layer.bias is None else base_layer.bias.detach().float().clone()
        self.weight = nn.Parameter(self.init_weight.unsqueeze(0).clone())
        self.bias: nn.Parameter | None = (None if self.init_bias is None
                                          else nn.Parameter(self.init_bias.unsqueeze(0).clone()))

    @property
    def n_clients(self) -> int:
        return int(self.weight.shape[0])

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.n_clients
        lead = x.shape[:-1]
        xs = x.reshape(c, -1, self.in_features).float()  # (C, n, in)
        w = self.weight.transpose(1, 2)  # (C, in, out)
        out = torch.bmm(xs, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xs, w)  # (C, n, out)
        return out.reshape(*lead, self.out_features)
