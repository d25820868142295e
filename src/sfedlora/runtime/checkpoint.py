"""Checkpoints that survive a crash and a damaged disk: everything a run needs to continue exactly where it
stopped, verified when read.

Content: the last finished round, every client's adapters and optimiser state, every client's data order
(shuffle RNG state, order, position), the participation RNG, torch's RNG, and the fp32 sum of the updates
merged into W0 (FLoRA). Written as a state file (runtime.statefile: safetensors and JSON, no pickle, a
checksum), atomically; the previous checkpoint is kept, and a newest one that fails verification (a
flipped bit, a truncated file) is set aside for the previous one, with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from sfedlora.errors import SfedloraError
from sfedlora.runtime import statefile

NAME, PREVIOUS, LEGACY = "checkpoint.safetensors", "checkpoint.prev.safetensors", "checkpoint.pt"


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


def load(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that verifies, or None where the run wrote none."""
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
        except statefile.StateError as exc:
            problems.append(str(exc))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from the previous checkpoint, {path.name}", stacklevel=2)
        return snapshot
    raise SfedloraError("no usable checkpoint: " + "; ".join(problems))
