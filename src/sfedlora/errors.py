"""The one exception type users see: a problem with their input, reported without a traceback."""


class SfedloraError(Exception):
    """A user-facing error (bad config, bad data, bad model path). The CLI prints it and exits 2."""
