"""The one exception type users see: a problem with their input, reported without a traceback; and the
warnings that void a result, which a run turns into that error instead of printing one line and going on."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class SfedloraError(Exception):
    """A user-facing error (bad config, bad data, bad model path). The CLI prints it and exits 2."""


# What torch and bitsandbytes say when the numbers that follow may be wrong (torch's "an autograd kernel was not
# registered ... This may lead to silently incorrect behavior" for an op without a backward, for one).
VOIDED = "a library warned that its results may be incorrect"  # in the error below; a Flower server looks for it
INCORRECT_RESULTS = (r"(?is).*(silently incorrect|incorrect (result|behaviou?r|gradient)"
                     r"|results? may be (incorrect|wrong))")


@contextmanager
def incorrect_results_are_errors(doing: str) -> Iterator[None]:
    """Within the block, a warning that results may be incorrect stops the work with an SfedloraError that
    says what was being done (`doing`) and quotes the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=INCORRECT_RESULTS)
        try:
            yield
        except Warning as w:
            raise SfedloraError(f"{doing} stopped: {VOIDED}, so they cannot be recorded: "
                                f"{type(w).__name__}: {w}") from None


def voided(reason: str, where: str) -> None:
    """A Flower node's error reply that is incorrect_results_are_errors' error stops the run there too (it is
    no client's fault to be left out for, as a crash or a timeout is)."""
    if VOIDED in reason:
        raise SfedloraError(f"{where}: {reason}")
