"""Checkpoints that survive a crash and a damaged disk: everything a run needs to continue exactly where it
stopped, verified when read.

Content: the last finished round, every client's adapters and optimiser state, every client's data order
(shuffle RNG state, order, position), the participation RNG, torch's RNG, and the fp32 sum of the updates
merged into W0 (FLoRA). Written as a state file (runtime.statefile: safetensors and JSON, no pickle, a
checksum), atomically; the previous checkpoint is kept. A checkpoint is used only if it verifies (a flipped
bit, a truncated file fail) and the run accepts it (`use`: its round has every record before it, its clients and
shapes are the run's, it restores without error); else the previous one is tried, with a warning naming the
reason, and a rejected newest one is set aside as `checkpoint.safetensors.damaged`, so that the next checkpoint
does not rotate it over the good one the run resumed from.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfedlora.errors import SfedloraError
from sfedlora.runtime import statefile

NAME, PREVIOUS, LEGACY = "checkpoint.safetensors", "checkpoint.prev.safetensors", "checkpoint.pt"
DAMAGED = NAME + ".damaged"
# what restoring an edited skeleton can raise (a checksum recomputed over wrong content): a reason, not a traceback
RESTORE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, SfedloraError)


def save(run_dir: Path, snapshot: dict[str, Any]) -> None:
    """The new checkpoint becomes the newest; the one it replaces is kept as the previous."""
    run_dir = Path(run_dir)
    if (run_dir / NAME).exists():  # a second name for the current one first: a kill at any moment leaves a newest
        link = run_dir / f"{PREVIOUS}.tmp{os.getpid()}"
        if link.exists():
            link.unlink()
        os.link(run_dir / NAME, link)
        os.replace(link, run_dir / PREVIOUS)
    statefile.save(run_dir / NAME, snapshot)  # atomic: the newest is the old one or the new one, never missing


def check(snap: dict[str, Any], rounds: int, recorded: set[int], first: int,
          expected: list[dict[str, tuple[tuple[int, ...], str]]] | None) -> str | None:
    """Why a verified checkpoint is not one this run can continue from, or None: its round outside 0..rounds,
    a round up to it without a record in metrics.jsonl (its line torn by a crash before it reached the disk),
    or (`expected`: each client's adapter names, shapes and dtypes, for a run that keeps its clients in the
    checkpoint) a client missing or a tensor of another shape or dtype."""
    rnd = snap.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 <= rnd <= rounds:
        return f"its round {rnd!r} is outside 0..{rounds}"
    missing = [t for t in range(first, rnd + 1) if t not in recorded]
    if missing:
        return (f"it is at round {rnd}, but metrics.jsonl has no record of round(s) {missing} (a line lost in a "
                "crash): the previous checkpoint, or a new run, recomputes them")
    if expected is None:
        return None
    for key in ("states", "opt_states", "samplers"):
        held = snap.get(key)
        if not isinstance(held, list) or len(held) != len(expected):
            count = len(held) if isinstance(held, list) else "no"
            return f"it holds {count} clients' {key}, the run has {len(expected)}"
    states = snap["states"]
    for c, (state, want) in enumerate(zip(states, expected, strict=True)):
        got = {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()} if isinstance(state, dict) else {}
        wrong = [k for k in want if got.get(k) != want[k]] + [k for k in got if k not in want]
        if wrong:
            k = wrong[0]
            return f"client {c}'s {k} is {got.get(k, 'missing')}, the run's is {want.get(k, 'absent')}"
    return None


def load(run_dir: Path, use: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint that verifies and that `use` (the run's check and restore) accepts without raising,
    or None where the run wrote none."""
    run_dir = Path(run_dir)
    candidates = [run_dir / n for n in (NAME, PREVIOUS) if (run_dir / n).exists()]
    if not candidates:
        if (run_dir / LEGACY).exists():
            raise SfedloraError(f"{run_dir / LEGACY} is a checkpoint in the old pickle format, which sfedlora no "
                                "longer reads (loading a pickle can run code): start the run again")
        return None
    problems = []
    for path in candidates:
        try:
            snapshot = statefile.load(path)
            if use is not None:
                use(snapshot)
        except statefile.StateError as exc:
            problems.append(str(exc))
        except RESTORE_ERRORS as exc:
            problems.append(f"{path} cannot be resumed from: {type(exc).__name__}: {exc}")
        else:
            if problems:  # the newest was refused: set aside, so the next save never rotates it over this one
                os.replace(run_dir / NAME, run_dir / DAMAGED)
                warnings.warn(f"{problems[0]}; resuming from the previous checkpoint, {path.name} (the refused one "
                              f"is kept as {DAMAGED})", stacklevel=2)
            return snapshot
    raise SfedloraError("no usable checkpoint: " + "; ".join(problems))
