"""Gradient checkpointing of the frozen base's transformer blocks (train.gradient_checkpointing).

While training, each block's forward runs under torch.utils.checkpoint (non-reentrant, RNG state
preserved): its activations are not kept for the backward pass but recomputed there, so activation memory
is that of one block instead of all of them, for about one more forward pass of compute. The blocks are
the longest nn.ModuleList of the model (BERT's encoder.layer, LLaMA's model.layers). transformers' own
switch needs the model in train mode, which would turn on the frozen base's dropout; this one does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's transformer blocks: its longest ModuleList (None if it has none)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return max(lists, key=len) if lists else None


@contextmanager
def checkpointed(model: nn.Module, on: bool) -> Iterator[int]:
    """While the block runs, recompute each transformer block in the backward pass (when `on`); yields the
    number of blocks wrapped."""
    found = blocks(model) if on else None
    wrapped: list[nn.Module] = []
    if found is not None:
        for block in found:
            original = block.forward

            def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if torch.is_grad_enabled():
                    return checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return _original(*args, **kwargs)

            block.forward = forward  # an instance attribute, removed after
            wrapped.append(block)
    try:
        yield len(wrapped)
    finally:
        for block in wrapped:
            del block.forward
