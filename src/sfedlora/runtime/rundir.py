"""The run folder, written and read in one place by both runners and every tool.

  config.yaml      the full config, plus `resolved`: the run description (runtime.resolve.Resolved)
  partitions.json  per client: train / val / test sizes and its label or category histogram
  metrics.jsonl    one record per round (runtime.records), appended as rounds finish
  checkpoint.safetensors (and .prev)  what --resume continues from (in-process runs; runtime.checkpoint)
  adapters.safetensors   every client's final adapters (in-process runs; what export reads); with
                   fed.client_store=disk the trained clients, the server's latest update and the name of
                   adapters.clients/, hard links to the trained clients' files (the same for .best and rounds/)
  adapters.best.safetensors  every client's adapters at the best-on-validation round (export --best); neither
                   file with keep_adapters false
  rounds/adapters.round-N.safetensors  every client's adapters after checkpointed round N, with
                   keep_round_adapters (export --round N)
  clients/client-C.safetensors  with fed.client_store=disk: the state of each client that has trained (adapters
                   before the latest download, optimiser state, data order; simulation.clientstore)
  checkpoints/clients-round-N/  hard links to clients/ as checkpoint N saw it (the newest two kept)
  server.safetensors     the server's last aggregate (Flower runs: the clients' adapters stay on their nodes)
  samples.jsonl    instruction and math: per evaluated round and client, the greedy completions of its fixed
                   sample prompts beside their references (eval.samples)
  summary.json     written last: a folder without it is unfinished
  .lock            the writer's PID; held (runtime.lock) for as long as a process writes the folder
State files are safetensors with a JSON skeleton and a checksum (runtime.statefile): no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sfedlora.config import RunConfig, config_from_dict, dotted, to_dict, written_only
from sfedlora.errors import SfedloraError
from sfedlora.runtime import lock, statefile
from sfedlora.runtime.records import JsonlWriter, read_jsonl, write_jsonl
from sfedlora.runtime.resolve import Resolved

CONFIG, PARTITIONS, METRICS, SUMMARY = "config.yaml", "partitions.json", "metrics.jsonl", "summary.json"
SAMPLES = "samples.jsonl"
ADAPTERS, BEST, SERVER = "adapters.safetensors", "adapters.best.safetensors", "server.safetensors"
ROUNDS = "rounds"


def round_adapters_path(out: Path, rnd: int) -> Path:
    return Path(out) / ROUNDS / f"adapters.round-{rnd}.safetensors"


def kept_rounds(out: Path) -> list[int]:
    """The rounds whose adapters the run kept (keep_round_adapters), in order."""
    names = (Path(out) / ROUNDS).glob("adapters.round-*.safetensors")
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in names)


def start(out: Path, cfg: RunConfig, resolved: Resolved, descriptions: list[dict[str, Any]],
          keep: Sequence[dict[str, Any]] = ()) -> JsonlWriter:
    """Create the folder, write the config with the run description and the partitions, and open
    metrics.jsonl with the records in `keep` (a resumed run's rounds so far)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(yaml.safe_dump({**to_dict(cfg), "resolved": resolved.as_record()}, sort_keys=False))
    (out / PARTITIONS).write_text(json.dumps(descriptions, indent=1))
    write_jsonl(out / METRICS, keep)  # atomically: a kill now leaves the old records or the kept ones, never fewer
    writer = JsonlWriter(out / METRICS, fresh=False)
    if (out / SAMPLES).exists():  # a resumed run keeps its samples up to its checkpoint, as its records
        last = max((r["round"] for r in keep), default=-1)
        write_jsonl(out / SAMPLES, [r for r in read_jsonl(out / SAMPLES) if r["round"] <= last])
    return writer


def write_samples(out: Path, rnd: int, per_client: dict[int, list[dict[str, str]]]) -> None:
    """Append a round's generation samples: one line per client and prompt."""
    with open(Path(out) / SAMPLES, "a", encoding="utf-8") as f:
        for client in sorted(per_client):
            for i, sample in enumerate(per_client[client]):
                f.write(json.dumps({"round": rnd, "client": client, "prompt_index": i, **sample}) + "\n")


def default_folder(cfg: RunConfig, engine: str = "simulation") -> Path:
    """A run's folder when none is given, for every runner: runs/<name>-<method>-r<rank>[-flower]-<time>."""
    name = f"{cfg.name or 'run'}-{cfg.fed.method}-r{cfg.lora.rank}" + ("" if engine == "simulation" else f"-{engine}")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_free(out: Path) -> None:
    """The one rule for a new run's folder, for every runner: new, or empty but for its lock."""
    if occupied(out):
        raise SfedloraError(f"output folder {out} exists and is not empty; choose another --out")


def occupied(out: Path) -> bool:
    """Whether the folder holds anything but its lock file."""
    return Path(out).is_dir() and any(p.name != lock.NAME for p in Path(out).iterdir())


def clear(out: Path) -> None:
    """Remove an unfinished run's files, keeping the lock file its writer holds."""
    for p in Path(out).iterdir():
        if p.name != lock.NAME:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def identity(cfg: RunConfig) -> dict[str, Any]:
    """A run's settings as dotted keys, every default filled in, but the keys that only decide what it writes
    (config.written_only: a sweep run again with `keep_adapters: false` keeps its runs)."""
    written = set(written_only())
    return {k: v for k, v in dotted(to_dict(cfg)).items() if k not in written}


def config_hash(cfg: RunConfig) -> str:
    """What identifies a run's settings: a hash of its identity."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:16]


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


def is_run(folder: Path) -> bool:
    """Whether a folder is a run folder (a run, finished or not, or a Flower run): it has config.yaml and the
    round records or partitions a run writes beside it."""
    folder = Path(folder)
    return (folder / CONFIG).is_file() and ((folder / METRICS).exists() or (folder / PARTITIONS).exists())


def finished(out: Path) -> bool:
    return (Path(out) / SUMMARY).exists()


def summary(out: Path) -> dict[str, Any]:
    if not finished(out):
        raise SfedloraError(f"{out} has no {SUMMARY}: the run did not finish")
    return json.loads((Path(out) / SUMMARY).read_text())


def finish(out: Path, summary: dict[str, Any]) -> None:
    """summary.json, last: from now on the folder is a finished run."""
    (Path(out) / SUMMARY).write_text(json.dumps(summary, indent=1))


def adapters_path(out: Path, best_round: int | None = None, kept_round: int | None = None) -> Path:
    """Where the final adapters go; or (best_round given) the best-on-validation round's; or (kept_round
    given) those after that round, kept beside the others for export --round."""
    if kept_round is not None:
        return round_adapters_path(out, kept_round)
    return Path(out) / (ADAPTERS if best_round is None else BEST)


def clients_folder(adapters: Path) -> Path:
    """A disk client store's adapters file names this folder of hard links to its clients' files."""
    return adapters.with_name(adapters.name.removesuffix(".safetensors") + ".clients")


def save_adapters(out: Path, states: list[dict[str, Any]], resolved: Resolved, merged: dict[str, Any],
                  best_round: int | None = None, kept_round: int | None = None,
                  held: dict[str, Any] | None = None) -> None:
    """Every client's adapters (`states`, in client order), at adapters_path. A disk client store gives no
    states but `held`: the trained clients, the folder of their files (clients_folder) and the server's latest
    update, which a client downloads when it is next used (simulation.clientstore)."""
    path = adapters_path(out, best_round, kept_round)
    path.parent.mkdir(exist_ok=True)
    statefile.save(path, {"states": states, **(held or {}), "ranks": resolved.ranks, "gammas": resolved.gammas,
                          "merged": merged, "targets": resolved.targets,
                          "round": best_round if kept_round is None else kept_round})


def load_adapters(out: Path, best: bool = False, rnd: int | None = None) -> dict[str, Any]:
    """The final adapters; with `best` those of the best-on-validation round; with `rnd` those kept after
    that round."""
    if rnd is not None:
        path = round_adapters_path(out, rnd)
        if not path.exists():
            kept = kept_rounds(out)
            raise SfedloraError(f"{out} kept no adapters for round {rnd}: " + (
                f"it kept rounds {', '.join(map(str, kept))}" if kept else
                "it was run without keep_round_adapters=true, or with checkpoint_every=0 (only the last and the "
                "best round can be exported)"))
        return statefile.load(path)
    if finished(out) and not read(out)[0].keep_adapters:
        raise SfedloraError(f"{out} was run with keep_adapters=false: it kept neither its final nor its best round's "
                            "adapters")
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
