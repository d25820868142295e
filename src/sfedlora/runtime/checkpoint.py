"""Checkpoints that survive a crash: everything a run needs to continue exactly where it stopped.

Content: the last finished round, every client's adapters and optimiser state, every client's data
order (shuffle RNG state, order, position), the participation RNG, torch's RNG, and the base-weight
updates merged so far (FLoRA). Written atomically: a temporary file, fsync, then rename, so a kill at
any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

NAME = "checkpoint.pt"


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_save(state, Path(run_dir) / NAME)


def load_file(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def load(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / NAME
    if not path.exists():
        return None
    return load_file(path)
