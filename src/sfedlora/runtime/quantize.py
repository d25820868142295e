"""A quantised frozen base (QLoRA; Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs",
NeurIPS 2023), through bitsandbytes: `model.quantization: 4bit` stores every linear layer of the
transformer blocks as NF4 with double quantisation (the quantisation constants quantised too) and computes
at the run's precision (bf16 where `model.precision` resolves to bf16, as QLoRA does on GPUs; fp32 on CPUs
without native bf16, where bf16 matmuls are emulated); `8bit` stores them as int8 (LLM.int8(), outlier
threshold 6). The task head and the LM head stay
in full precision, and the per-client adapters on top are fp32 as always.

Devices: bitsandbytes 0.50 runs both modes' forward and backward on CPU (tested here) and on CUDA. It pays
where the base weights dominate memory (billion-parameter bases, GPUs): for SmolLM2-135M on a 2-core CPU
the weights shrink from 513 to 159 MiB but the round's peak does not fall and a round is slower (its CPU
kernels dequantise every call); docs/usage.md has the measurement. FLoRA, which merges updates into the
base weights, cannot use a quantised base.

On a CPU with AVX512-BF16, bitsandbytes' Linear4bit repacks its weight for good, at the first forward in eval
mode whose input needs no gradient (an evaluation), into an inference-only format whose kernel has no
backward: every later training forward would then cut the gradient to every adapter below it. sfedlora's
frozen base is always in eval mode, so each 4-bit layer is kept out of that format (`_unpacked`); the probe
that decides it (`bitsandbytes.nn.modules.has_avx512bf16`) is faked in the tests, so that path is covered on
any CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sfedlora.adapters.layer import is_quantized
from sfedlora.errors import SfedloraError

__all__ = ["MODES", "quantize", "is_quantized"]

MODES = ("none", "8bit", "4bit")
HEADS = ("classifier", "score", "lm_head", "pooler")


def _quantised(layer: nn.Linear, mode: str, compute: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    weight = layer.weight.detach().float().cpu()
    bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().cpu(), requires_grad=False)
    q: Any
    if mode == "4bit":
        q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias is not None,
                              compute_dtype=compute, compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
        _unpacked(q)
    else:
        q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias is not None,
                                has_fp16_weights=False, threshold=6.0)
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        q.bias = bias
    return q.to("cpu")  # bitsandbytes quantises when the weight moves to a device


def _unpacked(layer: Any) -> None:
    """Keep a bitsandbytes Linear4bit in the format that has a backward: its forward repacks the weight for CPU
    inference only where this flag (set from the CPU probe at construction) is on."""
    if not hasattr(layer, "support_avx512bf16_for_cpu"):
        raise SfedloraError("this bitsandbytes version's Linear4bit has no support_avx512bf16_for_cpu flag, which "
                            "sfedlora turns off so that a 4-bit base keeps its backward on AVX512-BF16 CPUs; install "
                            "the version pyproject.toml's `quantization` extra names")
    layer.support_avx512bf16_for_cpu = False


def quantize(model: nn.Module, mode: str, compute: torch.dtype = torch.float32) -> int:
    """Replace the linear layers of the model's body (not its heads) by bitsandbytes' quantised ones
    computing in `compute`, in place; returns how many were replaced."""
    if mode == "none":
        return 0
    if mode not in MODES:
        raise SfedloraError(f"model.quantization must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SfedloraError(f"model.quantization={mode} needs bitsandbytes: pip install 'sfedlora[quantization]'") \
            from None
    names = [name for name, m in model.named_modules()
             if type(m) is nn.Linear and not any(part in HEADS for part in name.split("."))]
    for name in names:  # one layer at a time: its full-precision weight is freed as soon as it is replaced
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantised(getattr(parent, child), mode, compute))
    return len(names)

