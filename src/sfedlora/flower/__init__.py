"""sfedlora on Flower (flwr 1.41, Message API): a ServerApp and a ClientApp that execute the round protocol
(sfedlora.runtime.protocol) over Flower messages, a local deployment and the simulation engine. Flower is an
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
