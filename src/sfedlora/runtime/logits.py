"""How the LM loss may form a causal LM's logits: from the backbone's hidden states through the head (and the
config's logit transform), chunk by chunk (client.losses), instead of the model's own full-vocabulary forward.
Decided once per loaded model (runtime.models), by a probe."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

FAST_LOGITS = "_sfedlora_fast_logits"  # the attribute prepare_fast_logits sets on a causal LM


def logit_transform(config: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What a model does to its LM head's output before returning logits, from its config: Gemma-2/3's final
    softcapping (cap * tanh(logits / cap)), Cohere's logit_scale (times), Granite's logits_scaling (divided);
    None where the logits are the head's output."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    scale = getattr(text, "logit_scale", None)
    divisor = getattr(text, "logits_scaling", None)
    if cap:
        return lambda z: torch.tanh(z / cap) * cap
    if scale is not None and scale != 1:
        return lambda z: z * scale
    if divisor is not None and divisor != 1:
        return lambda z: z / divisor
    return None


def prepare_fast_logits(model: Any) -> bool:
    """Decide, once per loaded causal LM, whether lm_terms may form logits from the backbone's hidden states
    (head plus the config's logit transform) instead of the model's own full-vocabulary forward, and record
    it on the model. A probe on a short input must agree with the model's own logits: a model that changes
    its logits in a way the config does not name keeps the full forward (slower, never wrong)."""
    head = model.get_output_embeddings()
    fast = None
    if head is not None and hasattr(model, "base_model") and model.base_model is not model:
        transform = logit_transform(model.config)
        fast = (lambda h: head(h)) if transform is None else (lambda h: transform(head(h)))
        ids = (torch.arange(1, 17) % max(2, head.out_features)).view(2, 8).to(head.weight.device)
        with torch.no_grad():
            full = model(input_ids=ids).logits.float()
            ours = fast(model.base_model(input_ids=ids).last_hidden_state).float()
        tol = 2e-2 if head.weight.dtype == torch.bfloat16 else 1e-4
        if not torch.allclose(ours, full, rtol=tol, atol=tol * float(full.abs().max().clamp_min(1e-6))):
            warnings.warn(f"{type(model).__name__} changes its logits in a way sfedlora does not know: its LM "
                          "loss uses the model's own full-vocabulary logits (slower)", stacklevel=2)
            fast = None
    setattr(model, FAST_LOGITS, fast)
    return fast is not None
