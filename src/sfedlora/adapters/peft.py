"""The one bridge between sfedlora's adapter keys and PEFT's names (export, the peer benchmark, the tests that hold
sfedlora to PEFT). sfedlora names a factor '<module>.lora_A' / '<module>.lora_B' and a trainable head's parameter
'<module>.<param>'; PEFT wraps the model in `base_model.model`, keeps each adapter's factors under the adapter's
name, and keeps a trained head as a `modules_to_save` copy."""

from __future__ import annotations

from typing import Any

import torch

State = dict[str, torch.Tensor]
FACTORS = ("lora_A", "lora_B")


def parameter(key: str, adapter: str = "default") -> str:
    """sfedlora's key as the name of the parameter in a PEFT model that holds it (adapter `adapter`)."""
    module, name = key.rsplit(".", 1)
    if name in FACTORS:
        return f"base_model.model.{module}.{name}.{adapter}.weight"
    return f"base_model.model.{module}.modules_to_save.{adapter}.{name}"


def state_key(key: str) -> str:
    """A factor's key in PEFT's adapter state dict (get_peft_model_state_dict / set_peft_model_state_dict, which
    leave out the adapter's name)."""
    module, name = key.rsplit(".", 1)
    if name not in FACTORS:
        raise ValueError(f"{key!r} is not a LoRA factor (a head is saved by PEFT as a module, not by this key)")
    return f"base_model.model.{module}.{name}.weight"


def to_state_dict(state: State) -> State:
    """A client's factors as PEFT's adapter state dict."""
    return {state_key(k): v for k, v in state.items()}


def copy_into(peft_model: Any, state: State, adapter: str = "default") -> None:
    """Write a client's sfedlora state (factors and head) into a PEFT model's adapter `adapter`."""
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            params[parameter(key, adapter)].copy_(value)


def read_from(peft_model: Any, keys: list[str], adapter: str = "default") -> State:
    """The PEFT model's values of sfedlora's `keys` (detached)."""
    params = dict(peft_model.named_parameters())
    return {k: params[parameter(k, adapter)].detach() for k in keys}
