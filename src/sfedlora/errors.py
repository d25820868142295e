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
            raise SfedloraError(f"{doing} stopped: a library warned that its results may be incorrect, so they "
                                f"cannot be recorded: {type(w).__name__}: {w}") from None
