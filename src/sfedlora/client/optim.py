"""Per-client optimisers over stacked parameters (leading client dimension C).

Both are elementwise, so client c's slice evolves exactly as torch.optim.SGD / AdamW would evolve it
alone; the step counter is per client (shape (C,)) so bias correction is per client too. State is
split per client (client_state) and stacked back (load_client_states) so that it can be kept across
rounds (train.optimizer_state=keep) or dropped (reset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sfedlora.config import TrainConfig

ClientOptState = dict[str, dict[str, torch.Tensor]]  # param key -> {"step": (), "exp_avg": ..., ...}


class StackedOptimizer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.lr = cfg.lr  # this step's rate (core.schedule sets it per step)
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, params: dict[str, torch.nn.Parameter]) -> None:
        for key, p in params.items():
            if p.grad is None:
                continue
            st = self.state.setdefault(key, {"step": torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)})
            st["step"] += 1
            if self.cfg.optimizer == "adamw":
                self._adamw(p, p.grad, st)
            else:
                self._sgd(p, p.grad, st)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, st: dict[str, torch.Tensor]) -> None:
        # torch.optim.SGD: g += wd*p; buf = m*buf + g (buf = g at the first step); p -= lr*buf
        if self.cfg.weight_decay:
            g = g.add(p, alpha=self.cfg.weight_decay)
        if self.cfg.momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = g.clone()
            else:
                # clients with step == 1 start their buffer from g even in a group with older buffers
                first = (st["step"] == 1).view(-1, *([1] * (g.dim() - 1)))
                buf = torch.where(first, g, buf.mul(self.cfg.momentum).add(g))
            st["momentum_buffer"] = buf
            g = buf
        p.add_(g, alpha=-self.lr)

    def _adamw(self, p: torch.Tensor, g: torch.Tensor, st: dict[str, torch.Tensor]) -> None:
        # torch.optim.AdamW (decoupled weight decay), with a per-client step t of shape (C,)
        b1, b2 = self.cfg.betas
        lr, eps = self.lr, self.cfg.eps
        if self.cfg.weight_decay:
            p.mul_(1 - lr * self.cfg.weight_decay)
        m = st.setdefault("exp_avg", torch.zeros_like(p))
        v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        shape = (-1, *([1] * (p.dim() - 1)))
        t = st["step"].to(torch.float64)
        bias1 = (1 - b1**t).to(p.dtype).view(shape)
        bias2_sqrt = (1 - b2**t).sqrt().to(p.dtype).view(shape)
        denom = (v.sqrt() / bias2_sqrt).add_(eps)
        p.addcdiv_(m, denom * bias1, value=-lr)

    def client_state(self, c: int) -> ClientOptState:
        return {k: {n: t[c].detach().cpu().clone() for n, t in st.items()} for k, st in self.state.items()}

    def load_client_states(self, states: Sequence[ClientOptState], device: torch.device | str = "cpu") -> None:
        """Stack per-client states; a client without state for a key gets zeros (a fresh start)."""
        self.state = {}
        keys = {k for s in states for k in s}
        for key in keys:
            template = next(s[key] for s in states if key in s)
            self.state[key] = {
                n: torch.stack([s[key][n] if key in s else torch.zeros_like(template[n]) for s in states]).to(device)
                for n in template
            }
