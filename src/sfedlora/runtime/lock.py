"""One writer per run folder: an exclusive lock held for the whole run.

The lock is an advisory `fcntl.flock` on `<run>/.lock`, which holds the writer's PID. The kernel drops it
when the process ends in any way (kill -9 included), so a stale lock file never blocks a resume; a second
writer (another `sfedlora run` on the same --out, a --resume of a run still going, a sweep started twice)
gets a clear error that names the holder. A folder the lock created and nothing else wrote into (a run
that failed in set-up) is removed again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sfedlora.errors import SfedloraError

NAME = ".lock"


class Busy(SfedloraError):
    """The folder's lock is held by another process."""


@contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Create `folder` if needed and hold its lock until the block ends; raise if another process holds it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SfedloraError(f"{folder} is a file, not a run folder: choose another --out")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    made_lock = not (folder / NAME).exists()
    fd = os.open(folder / NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise Busy(f"{folder} is in use by another sfedlora process (PID {holder}); wait for it to end "
                       "or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if made_lock and [p.name for p in folder.iterdir()] == [NAME]:  # nothing written: leave nothing
                (folder / NAME).unlink()
                if created:
                    folder.rmdir()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
