"""sfedlora on Flower (flwr 1.41, Message API): a ServerApp that runs the round loop (sfedlora.runtime.rounds) with
Flower messages as its transport, a ClientApp whose nodes run the client step (sfedlora.client.step), a local
deployment and the simulation engine. Flower is an
optional extra: `pip install 'sfedlora[flower]'`; nothing outside this package imports it."""

from __future__ import annotations

from sfedlora.errors import SfedloraError


def require_flower() -> None:
    """A clear message, not an ImportError traceback, when Flower is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise SfedloraError("the Flower commands need Flower, an optional extra: pip install 'sfedlora[flower]' "
                            "(flwr 1.41)") from None
