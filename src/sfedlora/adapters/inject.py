"""Put stacked LoRA adapters on a Hugging Face model's target modules; read and write adapter state.

A client's adapter state is a flat dict[str, Tensor]:
    "<module>.lora_A" (r, d_in), "<module>.lora_B" (d_out, r)   for every adapted linear layer
    "<head>.weight" (out, in), ["<head>.bias" (out,)]           for a trainable task head, if any (a bias
                                                                only where the model's head has one)
A group of C clients is the same dict with a leading client dimension, see load_group/read_group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sfedlora.adapters.head import StackedHead
from sfedlora.adapters.layer import StackedLoRALinear
from sfedlora.core.scaling import Gamma
from sfedlora.errors import SfedloraError

# Suffixes of module names. LLaMA-style and BERT-style names both appear; a model matches one family.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj", "attention.self.query", "attention.self.value"),
    "all-attention": (
        "q_proj", "k_proj", "v_proj", "o_proj",
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    ),
}
# Task-head linears that train in full on every client and are averaged by every method: the classifier
# (BERT `classifier`, RoBERTa `classifier.dense`/`classifier.out_proj`, LLaMA `score`) and BERT's pooler,
# whose pretrained outputs are too small (std ~0.04 on MiniLM) for a classifier alone to learn from.
HEAD_NAMES = ("classifier", "score", "pooler.dense")


def _is_head(name: str) -> bool:
    return _matches(name, HEAD_NAMES) or name.startswith("classifier.") or ".classifier." in name


def resolve_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name ("qv", "all-attention") or an explicit list of module-name suffixes."""
    if isinstance(targets, str):
        if targets in TARGET_PRESETS:
            return TARGET_PRESETS[targets]
        return tuple(t.strip() for t in targets.split(",") if t.strip())
    return tuple(targets)


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, targets: str | Sequence[str], dropout: float = 0.0,
                    head: bool = False) -> list[str]:
    """Freeze `model`, wrap every nn.Linear whose name ends with a target; return the wrapped names.

    With head=True the task head's linears (see HEAD_NAMES) become trainable StackedHeads.
    """
    suffixes = resolve_targets(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(n, m) for n, m in linears if _matches(n, suffixes) and not _is_head(n)]
    if not chosen:
        examples = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in linears})[:12])
        raise SfedloraError(
            f"LoRA targets {list(suffixes)} match no linear module of this model; its linear layers "
            f"end in: {examples}"
        )
    for name, module in chosen:  # new layers take the model's mode (eval after loading: no dropout)
        _set_submodule(model, name, StackedLoRALinear(module, dropout=dropout).train(model.training))
    if head:
        heads = [(n, m) for n, m in linears if _is_head(n)]
        if not heads:
            raise SfedloraError("this model has no `classifier` or `score` head to train for classification")
        for name, module in heads:
            _set_submodule(model, name, StackedHead(module))
    return [n for n, _ in chosen]


def lora_layers(model: nn.Module) -> dict[str, StackedLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, StackedLoRALinear)}


def set_merged(model: nn.Module, merged: dict[str, torch.Tensor]) -> None:
    """FLoRA: every adapted weight becomes W0 plus its fp32 sum of merged updates in `merged` (by module); a layer
    merged before but absent from `merged` goes back to W0 (a checkpoint tried and refused leaves no update in the
    base)."""
    with torch.no_grad():
        for m, layer in lora_layers(model).items():
            if m in merged:
                layer.merge_base(merged[m])
            elif layer.w0 is not None:
                layer.merge_base(torch.zeros_like(layer.w0, dtype=torch.float32))


def head_layers(model: nn.Module) -> dict[str, StackedHead]:
    return {n: m for n, m in model.named_modules() if isinstance(m, StackedHead)}


def init_adapter_state(model: nn.Module, rank: int, generator: torch.Generator, a_init: str = "kaiming",
                       a_init_std: float | None = None) -> dict[str, torch.Tensor]:
    """One client's fresh adapters: A random, B = 0 (so the model starts exactly at W0), head at its init.

    kaiming: U(-1/sqrt(d_in), 1/sqrt(d_in)), PEFT's kaiming_uniform_(a=sqrt(5)).
    gaussian: N(0, std^2), std = a_init_std or 1/sqrt(d_in); variance independent of r and N,
    as the SFed-LoRA proof assumes.
    """
    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        d_in, d_out = layer.in_features, layer.out_features
        if a_init == "kaiming":
            bound = 1.0 / math.sqrt(d_in)
            a = torch.rand(rank, d_in, generator=generator) * (2 * bound) - bound
        elif a_init == "gaussian":
            std = a_init_std if a_init_std is not None else 1.0 / math.sqrt(d_in)
            a = torch.randn(rank, d_in, generator=generator) * std
        else:
            raise SfedloraError(f"unknown A init {a_init!r}; choose kaiming or gaussian")
        state[f"{name}.lora_A"] = a
        state[f"{name}.lora_B"] = torch.zeros(d_out, rank)
    for name, head in head_layers(model).items():
        state[f"{name}.weight"] = head.init_weight.clone()
        if head.init_bias is not None:
            state[f"{name}.bias"] = head.init_bias.clone()
    return state


def load_group(model: nn.Module, states: Sequence[dict[str, torch.Tensor]], gammas: Sequence[Gamma],
               device: torch.device | str = "cpu") -> None:
    """Install C clients' adapter states (client-major) into the model's stacked layers. A client's gamma
    is one number, or one per adapted module (lora.scaling=adaptive)."""
    for name, layer in lora_layers(model).items():
        a = torch.stack([s[f"{name}.lora_A"] for s in states]).to(device)
        b = torch.stack([s[f"{name}.lora_B"] for s in states]).to(device)
        gamma = torch.tensor([g[name] if isinstance(g, Mapping) else g for g in gammas], dtype=torch.float32,
                             device=device)
        layer.set_adapters(a, b, gamma)
    for name, head in head_layers(model).items():
        bias = None if head.init_bias is None else torch.stack([s[f"{name}.bias"] for s in states]).to(device)
        head.set_weights(torch.stack([s[f"{name}.weight"] for s in states]).to(device), bias)


def group_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The stacked trainable tensors, keyed like a client's adapter state."""
    params: dict[str, nn.Parameter] = {}
    for name, layer in lora_layers(model).items():
        params[f"{name}.lora_A"] = layer.lora_A
        params[f"{name}.lora_B"] = layer.lora_B
    for name, head in head_layers(model).items():
        params[f"{name}.weight"] = head.weight
        if head.bias is not None:
            params[f"{name}.bias"] = head.bias
    return params


def read_group(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The C installed clients' adapter states, back on the CPU."""
    params = group_parameters(model)
    n = next(iter(params.values())).shape[0]
    return [{k: v[c].detach().to("cpu", copy=True) for k, v in params.items()} for c in range(n)]
