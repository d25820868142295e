"""A frozen linear layer with C stacked per-client LoRA adapters, trained in one forward/backward.

For client c the layer computes  h_c = W0 x_c + gamma_c * B_c (A_c x_c)  (Hu et al., 2022, eq. 3).
The input is client-major: rows [c*n, (c+1)*n) of the batch belong to client c, so one batched
matmul gives every client exactly the output (and, by linearity of backprop, the gradient) it
would get alone. C = 1 is the ordinary single-adapter case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_quantized(layer: nn.Module) -> bool:
    """Whether a base layer stores its weight quantised (bitsandbytes; runtime.quantize): it must then be
    called, never read as a matrix."""
    weight = getattr(layer, "weight", None)
    return weight is not None and not weight.dtype.is_floating_point


class StackedLoRALinear(nn.Module):
    """`base_layer` stays frozen; `lora_A` (C, r, d_in) and `lora_B` (C, d_out, r) hold C clients."""

    def __init__(self, base_layer: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # No adapters until set_adapters(): the layer then behaves exactly like base_layer.
        self.lora_A = nn.Parameter(torch.zeros(0, 0, self.in_features), requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(0, self.out_features, 0), requires_grad=False)
        self.register_buffer("gamma", torch.zeros(0), persistent=False)
        # Adapter output moments (sum, sum of squares, count) per client, accumulated over the real tokens
        # while `moment_mask` (C, n*seq: 1 for a token, 0 for padding and filler rows) is set.
        self.moment_mask: torch.Tensor | None = None
        self.moments: torch.Tensor | None = None
        self.w0: torch.Tensor | None = None  # the loaded weight, kept once updates are merged into it

    def merge_base(self, total: torch.Tensor) -> None:
        """Set the frozen weight to W0 + `total`, the fp32 sum of every update merged so far (FLoRA).

        The sum is added to the weight as loaded, afresh each time, never accumulated in the weight itself:
        a bf16 weight would round updates away (at weights ~0.02, 8e-5 loses ~32%, 8e-6 ~90%), and a resumed
        run rebuilds the same bits from the same sum. The merged weight is fp32: in a bf16 model this layer
        keeps an fp32 master and computes its base product in fp32."""
        if self.w0 is None:
            self.w0 = self.base_layer.weight.detach().clone()
        weight = self.w0.float() + total.to(self.w0.device, torch.float32)
        self.base_layer.weight = nn.Parameter(weight, requires_grad=False)

    @property
    def n_clients(self) -> int:
        return int(self.lora_A.shape[0])

    def set_adapters(self, lora_A: torch.Tensor, lora_B: torch.Tensor, gamma: torch.Tensor) -> None:
        """Install C clients' factors: lora_A (C, r, d_in), lora_B (C, d_out, r), gamma (C,)."""
        c, r, d_in = lora_A.shape
        if d_in != self.in_features or lora_B.shape != (c, self.out_features, r) or gamma.shape != (c,):
            raise ValueError(
                f"adapter shapes A{tuple(lora_A.shape)} B{tuple(lora_B.shape)} gamma{tuple(gamma.shape)} "
                f"do not fit a {self.in_features}->{self.out_features} layer"
            )
        self.lora_A = nn.Parameter(lora_A.detach().clone().float())
        self.lora_B = nn.Parameter(lora_B.detach().clone().float())
        self.gamma = gamma.detach().clone().float().to(lora_A.device)
        self.moments = None

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """gamma_c * B_c A_c x for client-major x (C*n, ..., d_in) -> (C*n, ..., d_out), in fp32."""
        c = self.n_clients
        lead = x.shape[:-1]
        xs = self.dropout(x).reshape(c, -1, self.in_features).to(self.lora_A.dtype)  # (C, n*seq, d_in)
        h = torch.bmm(xs, self.lora_A.transpose(1, 2))  # (C, n*seq, r)
        out = torch.bmm(h, self.lora_B.transpose(1, 2)) * self.gamma.view(c, 1, 1)  # (C, n*seq, d_out)
        if self.moment_mask is not None:
            with torch.no_grad():
                w = self.moment_mask.to(out.dtype)  # (C, n*seq)
                stats = torch.stack([(out.sum(-1) * w).sum(1), (out.square().sum(-1) * w).sum(1),
                                     w.sum(1) * self.out_features], dim=1).double()  # (C, 3)
                self.moments = stats if self.moments is None else self.moments + stats
        return out.reshape(*lead, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.base_layer.weight, self.base_layer.bias
        if w.dtype == x.dtype or is_quantized(self.base_layer):
            base = self.base_layer(x)
        else:  # an fp32 master weight (merge_base) in a bf16 model
            base = F.linear(x.to(w.dtype), w, None if bias is None else bias.to(w.dtype)).to(x.dtype)
        if self.n_clients == 0:
            return base
        if x.shape[0] % self.n_clients:
            raise ValueError(f"batch of {x.shape[0]} rows is not client-major over {self.n_clients} clients")
        return base + self.lora_delta(x).to(base.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, clients={self.n_clients}, rank={self.lora_A.shape[1]}"
