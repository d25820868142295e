"""The run folder, written and read in one place by both runners and every tool.

  config.yaml      the full config, plus `resolved`: the run description (runtime.resolve.Resolved)
  partitions.json  per client: train / val / test sizes and its label or category histogram
  metrics.jsonl    one record per round (runtime.records), appended as rounds finish
  checkpoint.safetensors (and .prev)  what --resume continues from (in-process runs; runtime.checkpoint)
  adapters.safetensors   every client's final adapters (in-process runs; what export reads)
  adapters.best.safetensors  every client's adapters at the best-on-validation round (export --best)
  server.safetensors     the server's last aggregate (Flower runs: the clients' adapters stay on their nodes)
  summary.json     written last: a folder without it is unfinished
  .lock            the writer's PID; held (runtime.lock) for as long as a process writes the folder
State files are safetensors with a JSON skeleton and a checksum (runtime.statefile): no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sfedlora.config import RunConfig, config_from_dict, to_dict
from sfedlora.errors import SfedloraError
from sfedlora.runtime import lock, statefile
from sfedlora.runtime.records import JsonlWriter, read_jsonl
from sfedlora.runtime.resolve import Resolved

CONFIG, PARTITIONS, METRICS, SUMMARY = "config.yaml", "partitions.json", "metrics.jsonl", "summary.json"
ADAPTERS, BEST, SERVER = "adapters.safetensors", "adapters.best.safetensors", "server.safetensors"


def start(out: Path, cfg: RunConfig, resolved: Resolved, descriptions: list[dict[str, Any]],
          keep: Sequence[dict[str, Any]] = ()) -> JsonlWriter:
    """Create the folder, write the config with the run description and the partitions, and open
    metrics.jsonl with the records in `keep` (a resumed run's rounds so far)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(yaml.safe_dump({**to_dict(cfg), "resolved": resolved.as_record()}, sort_keys=False))
    (out / PARTITIONS).write_text(json.dumps(descriptions, indent=1))
    writer = JsonlWriter(out / METRICS)
    for record in keep:
        writer.write(record)
    return writer


def occupied(out: Path) -> bool:
    """Whether the folder holds anything but its lock file."""
    return Path(out).is_dir() and any(p.name != lock.NAME for p in Path(out).iterdir())


def clear(out: Path) -> None:
    """Remove an unfinished run's files, keeping the lock file its writer holds."""
    for p in Path(out).iterdir():
        if p.name != lock.NAME:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def config_hash(cfg: RunConfig) -> str:
    """What identifies a run's settings: a hash of its full config (every default filled in)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def read(out: Path) -> tuple[RunConfig, Resolved]:
    """The config a run used and its run description."""
    path = Path(out) / CONFIG
    if not path.exists():
        raise SfedloraError(f"{out} is not a run folder (no {CONFIG})")
    raw = yaml.safe_load(path.read_text())
    resolved = raw.pop("resolved", {})
    return config_from_dict(raw), Resolved.from_record(resolved)


def records(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(out) / METRICS)


def finished(out: Path) -> bool:
    return (Path(out) / SUMMARY).exists()


def summary(out: Path) -> dict[str, Any]:
    if not finished(out):
        raise SfedloraError(f"{out} has no {SUMMARY}: the run did not finish")
    return json.loads((Path(out) / SUMMARY).read_text())


def finish(out: Path, summary: dict[str, Any]) -> None:
    """summary.json, last: from now on the folder is a finished run."""
    (Path(out) / SUMMARY).write_text(json.dumps(summary, indent=1))


def save_adapters(out: Path, states: list[dict[str, Any]], resolved: Resolved, merged: dict[str, Any],
                  best_round: int | None = None) -> None:
    """The final adapters, or (best_round given) those of the best-on-validation round so far."""
    statefile.save(Path(out) / (ADAPTERS if best_round is None else BEST),
                   {"states": states, "ranks": resolved.ranks, "gammas": resolved.gammas, "merged": merged,
                    "targets": resolved.targets, "round": best_round})


def load_adapters(out: Path, best: bool = False) -> dict[str, Any]:
    """The final adapters, or with `best` those of the best-on-validation round."""
    if best:
        if not (Path(out) / BEST).exists():
            raise SfedloraError(f"{out} has no {BEST}: its runner did not keep the best round's adapters (a Flower "
                                "run, or a version before export --best)")
        return statefile.load(Path(out) / BEST)
    path = Path(out) / ADAPTERS
    if not path.exists():
        if (Path(out) / "adapters.pt").exists():
            raise SfedloraError(f"{out}/adapters.pt is in the old pickle format, which sfedlora no longer reads "
                                "(loading a pickle can run code)")
        raise SfedloraError(f"{out} has no {ADAPTERS}: the run did not finish (resume it with --resume)")
    return statefile.load(path)


def save_server(out: Path, update: dict[str, Any], resolved: Resolved) -> None:
    statefile.save(Path(out) / SERVER, {"update": update, "ranks": resolved.ranks, "gammas": resolved.gammas,
                                        "targets": resolved.targets})
