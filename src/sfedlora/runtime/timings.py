"""Timings kept per situation: set-up's measurements (the attention implementation, runtime.attention; the
group size, simulation.grouping) cost seconds each, and the runs of a sweep share one situation, so a
measurement is stored in the cache (`$SFEDLORA_CACHE/timings/`) under a key of everything it depends on
(`situation`: the CPU's model name and feature flags or the GPU's name, torch's threads, the torch and
transformers versions, and the probe's own description: model, precision, shape, adapters) and reused where
the key is equal. Delete the folder to measure again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers

from sfedlora.data.cache import cache_dir
from sfedlora.runtime import allocator
from sfedlora.runtime.resolve import cpu_flags

K = TypeVar("K", bound=Hashable)


def machine(device: torch.device) -> str:
    """What the timings depend on in the machine: the GPU's name, or the CPU's model name and feature flags."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = cpu_flags().splitlines()
    first = lambda field: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(field)), "")
    return f"{first('model name')} | {hashlib.sha1(first('flags').encode()).hexdigest()[:12]}"


def situation(device: torch.device, probe: dict[str, Any]) -> dict[str, Any]:
    """The cache key of a measurement: the machine, torch's threads, whether malloc was tuned (runtime.allocator:
    the page faults it removes grow with the step), the libraries' versions and the probe's own description
    (model, precision, shape, adapters)."""
    return {"machine": machine(device), "threads": torch.get_num_threads(), "malloc_tuned": allocator.TUNED,
            "torch": torch.__version__, "transformers": transformers.__version__, **probe}


def cache_folder() -> Path:
    """Where measured timings are kept (tests point it elsewhere: their timings are faked)."""
    return cache_dir("timings")


def _plain(key: dict[str, Any]) -> dict[str, Any]:
    """The key as JSON gives it back (tuples as lists): what a stored entry is compared with."""
    return json.loads(json.dumps(key, sort_keys=True))


def _cache_file(key: dict[str, Any]) -> Path:
    return cache_folder() / f"{hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"


def cached(key: dict[str, Any]) -> dict[str, Any] | None:
    """The timings measured before in this situation ({"seconds", "measured_at"}), if any (an unreadable entry
    counts as none)."""
    try:
        entry = json.loads(_cache_file(key).read_text())
    except (OSError, ValueError):
        return None
    return entry if entry.get("key") == _plain(key) and isinstance(entry.get("seconds"), dict) else None


def time_in_turn(prepare: Callable[[K], Callable[[], object]], options: Sequence[K], warm: Sequence[K],
                 repeats: int) -> dict[K, float]:
    """Seconds of one step under each option: `prepare(option)` sets the option up (untimed) and returns the step
    to time. One warm-up under each of `warm`, then `repeats` rounds that time every option in turn, the fastest
    of each kept: interleaved, so a load that comes and goes (another process on the machine) slows every option
    alike. The RNG streams are left as they were (a training step draws dropout)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    sync = torch.cuda.synchronize if devices else (lambda: None)
    seconds = dict.fromkeys(options, float("inf"))
    with torch.random.fork_rng(devices=devices):
        for option in warm:
            prepare(option)()
        for _ in range(repeats):
            for option in options:
                step = prepare(option)
                sync()
                t = time.perf_counter()
                step()
                sync()
                seconds[option] = min(seconds[option], time.perf_counter() - t)
    return seconds


def measured(key: dict[str, Any] | None,
             measure: Callable[[], dict[str, float]]) -> tuple[dict[str, float], str, str | None]:
    """(timings, "measured" | "cached", when measured): the timings kept under `key` if there are any, else
    `measure()`'s, kept under `key` (None: measured and not kept)."""
    before = None if key is None else cached(key)
    if before is not None:
        return before["seconds"], "cached", before["measured_at"]
    seconds = measure()
    return seconds, "measured", None if key is None else keep(key, seconds)


def keep(key: dict[str, Any], seconds: dict[str, float]) -> str:
    """Store a measurement under its situation (atomically: sweeps run side by side); returns its time stamp."""
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = _cache_file(key)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "seconds": seconds, "measured_at": when}, sort_keys=True))
    os.replace(tmp, path)
    return when
