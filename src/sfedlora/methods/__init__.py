"""Every federated LoRA method sfedlora implements, by name: the one registry of names and capabilities.

  fedavg.py   FedIT, FFA-LoRA, RoLoRA
  fedsa.py    FedSA-LoRA, FedSA-rsLoRA, SFed-LoRA
  hetero.py   HetLoRA, raFLoRA, FLoRA, FlexLoRA
"""

from __future__ import annotations

from collections.abc import Callable

from sfedlora.core.server_opt import SERVER_OPTIMIZERS
from sfedlora.errors import SfedloraError
from sfedlora.methods.base import FederatedMethod
from sfedlora.methods.fedavg import FedIT, FFALoRA, RoLoRA
from sfedlora.methods.fedsa import FedSALoRA, FedSArsLoRA, SFedLoRA
from sfedlora.methods.hetero import FlexLoRA, FLoRA, HetLoRA, RaFLoRA

METHODS: dict[str, type[FederatedMethod]] = {
    cls.name: cls
    for cls in (FedIT, FFALoRA, FedSALoRA, FedSArsLoRA, SFedLoRA, RoLoRA, HetLoRA, RaFLoRA, FLoRA, FlexLoRA)
}


def get_method(name: str) -> FederatedMethod:
    if name not in METHODS:
        raise SfedloraError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]()


def names(having: Callable[[type[FederatedMethod]], bool]) -> list[str]:
    """The methods with a capability, e.g. names(lambda m: m.heterogeneous_ranks): for messages and checks,
    so that no list of method names is written twice."""
    return [name for name, cls in METHODS.items() if having(cls)]


def describe() -> list[str]:
    """Every method: its scaling rule, what it trains and uploads, and its paper (`sfedlora methods`)."""
    lines = []
    for name, cls in METHODS.items():
        m = cls()
        odd, even = ("/".join(sorted(m.trained(t) - {"head"})) for t in (1, 2))
        trains = odd if odd == even else f"{odd} (odd rounds) / {even} (even rounds)"
        lines.append(f"{name:<13} scaling {cls.default_scaling:<7} trains {trains:<32} uploads "
                     f"{'/'.join(sorted(m.uploaded(1) - {'head'}))}")
        lines.append(f"{'':<13} {cls.citation}")
        acts = "/".join(sorted(m.uploaded(1) - {"head"} if m.trained(1) == m.trained(2) else {"the trained factor"}))
        lines.append(f"{'':<13} fed.server_optimizer: " + (f"none only ({cls.no_server_optimizer})"
                     if cls.no_server_optimizer else f"{', '.join(SERVER_OPTIMIZERS)} (acting on {acts}, and a "
                                                    "classification head)"))
    return lines


__all__ = ["FederatedMethod", "describe", "METHODS", "get_method", "names", "FedIT", "FFALoRA", "FedSALoRA",
           "FedSArsLoRA",
           "SFedLoRA", "RoLoRA", "HetLoRA", "RaFLoRA", "FLoRA", "FlexLoRA"]
