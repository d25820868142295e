"""Every federated LoRA method sfedlora implements, by name: the one registry of names and capabilities.

  fedavg.py   FedIT, FFA-LoRA, RoLoRA
  fedsa.py    FedSA-LoRA, FedSA-rsLoRA, SFed-LoRA
  hetero.py   HetLoRA, raFLoRA, FLoRA, FlexLoRA
"""

from __future__ import annotations

from collections.abc import Callable

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


__all__ = ["FederatedMethod", "METHODS", "get_method", "names", "FedIT", "FFALoRA", "FedSALoRA", "FedSArsLoRA",
           "SFedLoRA", "RoLoRA", "HetLoRA", "RaFLoRA", "FLoRA", "FlexLoRA"]
