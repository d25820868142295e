"""Per-example and per-client losses for a client-major batch.

A group's training loss is the sum over clients of each client's own mean loss, so client c's
gradient is exactly the gradient of its mean loss alone (the other terms do not depend on its adapters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sfedlora.data.batching import IGNORE
from sfedlora.runtime.logits import FAST_LOGITS


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def classification_terms(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, loss count, predicted label) per example, each of shape (rows,)."""
    logits = model(**_inputs(batch)).logits.float()  # (rows, labels)
    loss = F.cross_entropy(logits, batch["label"], reduction="none")
    return loss, torch.ones_like(loss), logits.argmax(-1)


def lm_terms(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of response tokens, zeros) per example.

    Where prepare_fast_logits allowed it, logits are formed only at positions that predict a response token:
    the LM head (and the model's logit transform) is applied to those hidden states alone, not to the whole
    (rows, seq, vocab) tensor. Elsewhere the model's own logits are used."""
    labels = batch["labels"]
    target = labels[:, 1:]  # (rows, seq-1): token t+1 predicted from position t
    mask = target != IGNORE
    fast = getattr(model, FAST_LOGITS, None)
    rows = labels.shape[0]
    if fast is not None:
        # no KV cache: nothing reuses it, and a recomputed block (train.gradient_checkpointing) must not extend it
        hidden = model.base_model(**_inputs(batch), use_cache=False).last_hidden_state[:, :-1]  # (rows, seq-1, d)
        token_loss = chunked_cross_entropy(fast, hidden[mask], target[mask])  # (n_tokens,)
    else:
        logits = model(**_inputs(batch), use_cache=False).logits[:, :-1][mask].float()
        token_loss = F.cross_entropy(logits, target[mask], reduction="none")  # (n_tokens,)
    row_of = torch.arange(rows, device=labels.device).unsqueeze(1).expand_as(mask)[mask]
    loss_sum = torch.zeros(rows, device=labels.device, dtype=token_loss.dtype).index_add_(0, row_of, token_loss)
    count = mask.sum(1).to(token_loss.dtype)
    return loss_sum, count, torch.zeros_like(count)


CE_CHUNK = 1024  # tokens whose vocabulary-sized logits exist at one time


def _head_ce(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), target, reduction="none")


def chunked_cross_entropy(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of head(hidden) without holding (n_tokens, vocab) logits: chunks of
    CE_CHUNK tokens, each recomputed in the backward pass (activation checkpointing), so logit memory is
    CE_CHUNK x vocab whatever the number of tokens."""
    if hidden.shape[0] <= CE_CHUNK:
        return _head_ce(head, hidden, target)
    pieces = []
    for i in range(0, hidden.shape[0], CE_CHUNK):
        h, t = hidden[i:i + CE_CHUNK], target[i:i + CE_CHUNK]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_head_ce, head, h, t, use_reentrant=False))
        else:
            pieces.append(_head_ce(head, h, t))
    return torch.cat(pieces)


def per_client(values: torch.Tensor, n_clients: int, weight: torch.Tensor) -> torch.Tensor:
    """Sum of weighted per-row values per client: (rows,) -> (clients,)."""
    return (values * weight).view(n_clients, -1).sum(1)


def group_terms(model: Any, batch: dict[str, torch.Tensor], n_clients: int,
                task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each client's summed loss over its rows (classification) or its response tokens (LM), and how many
    it summed: two (clients,) tensors."""
    terms = classification_terms if task == "classification" else lm_terms
    loss_sum, count, _ = terms(model, batch)
    w = batch["weight"].to(loss_sum.dtype)
    return per_client(loss_sum, n_clients, w), per_client(count, n_clients, w)


def group_loss(model: Any, batch: dict[str, torch.Tensor], n_clients: int, task: str) -> torch.Tensor:
    """Each client's mean loss over its rows (classification) or its response tokens (LM): (clients,)."""
    loss_sum, count = group_terms(model, batch, n_clients, task)
    return loss_sum / count.clamp_min(1)
