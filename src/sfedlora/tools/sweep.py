"""Sweeps: an experiment spec expands a grid of config overrides into runs, run one after another.

A spec (YAML) names a base config, fixed overrides and a grid per size (`quick` runs offline on a CPU,
`paper` uses the paper's models and data by their hub names):

    name: rank-sweep
    quick:
      base: default                    # built-in config name or path
      set: {fed.rounds: 6}             # applied to every run
      grid: {fed.method: [fedsa-lora, sfed-lora], lora.rank: [4, 64], seed: [0, 1]}
      also: [{fed.method: sfed-lora, lora.scaling: none}]   # extra single runs (e.g. a baseline)

`grid` may also be a list of such mappings, run one after another: the union of their products, for grids whose
values depend on another key (SGD and AdamW with a rate grid each).

Each grid point gets its own run folder named after the grid values. A folder with summary.json whose
config equals the planned one in all but what it writes (runtime.rundir.config_hash: trackers, checkpoints,
kept adapters and samples aside) is finished and skipped, so re-running a sweep
continues it; an unfinished folder is started again; a finished folder made with other settings (the spec
or the extra overrides changed) stops the sweep before anything runs, naming the settings that differ.

`--only KEY=V1,V2` (repeatable) runs a slice of the grid: the runs whose config has one of the listed values
for every named key (to split a sweep between machines, or to run the part of a grid a question needs first).

Several processes can work through one sweep at once (`sfedlora sweep` started again on the same --out, on
this machine or another sharing the folder): each run folder is locked while it runs (runtime.lock), and a
process skips the runs another one holds. On a 2-core CPU two processes of one thread each finish small
runs sooner than one of two threads (docs/usage.md).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sfedlora.config import read_yaml, same_value
from sfedlora.errors import SfedloraError

EXPERIMENT_DIR = Path(__file__).parent.parent / "experiments"
SIZES = ("quick", "paper")


@dataclass
class PlannedRun:
    folder: Path
    base: Path | None  # None: the defaults
    overrides: list[str]
    label: str

    @property
    def config(self) -> Any:
        from sfedlora.config import load_config

        return load_config(self.base, self.overrides)

    @property
    def done(self) -> bool:
        return (self.folder / "summary.json").exists()


def stale(run: PlannedRun) -> str | None:
    """Why a finished folder is not this planned run (its recorded config differs), or None."""
    from sfedlora.runtime import rundir

    recorded, _ = rundir.read(run.folder)
    planned = run.config
    if rundir.config_hash(recorded) == rundir.config_hash(planned):
        return None
    a, b = rundir.identity(recorded), rundir.identity(planned)  # what a run writes is no difference
    diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} planned" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return f"{run.folder} was made with other settings ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''})"


def stale_data(runs: Sequence[PlannedRun]) -> list[str]:
    """The finished runs among `runs` whose recorded data fingerprint is not what their data gives now (their
    data changed since they ran), as --resume checks it; computed once per distinct data set-up."""
    from sfedlora.runtime import rundir
    from sfedlora.runtime.setup import data_fingerprint, data_ident

    now: dict[str, str] = {}
    out = []
    for run in runs:
        recorded = rundir.read(run.folder)[1].data_fingerprint
        if not recorded:  # a run written before fingerprints were recorded, or a Flower run: nothing to compare
            continue
        ident = data_ident(run.config)
        if ident not in now:
            now[ident] = data_fingerprint(run.config)
        if now[ident] != recorded:
            out.append(str(run.folder))
    return out


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def spec_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():  # a run folder named like a built-in spec (rank-sweep/) is not a spec
        return path
    if (EXPERIMENT_DIR / f"{name}.yaml").exists():
        return EXPERIMENT_DIR / f"{name}.yaml"
    raise SfedloraError(f"no sweep spec {name!r} (a file, or one of: {', '.join(builtin_specs())})")


def _value_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").strip()


def _slug(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", _value_text(value)).strip("-")
    return f"{short}={text}"


def load_spec(name: str, size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = spec_path(name)
    try:
        spec = read_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SfedloraError(f"cannot read sweep spec {path}: {exc}") from None
    if not isinstance(spec, dict) or size not in spec:
        raise SfedloraError(f"sweep spec {path} has no `{size}` section (sizes: {', '.join(SIZES)})")
    section = spec[size]
    if not isinstance(section.get("set", {}), dict):
        raise SfedloraError(f"{path}: {size}.set must be a mapping of config keys")
    grids(section, path, size)
    return spec, section


def grids(section: dict[str, Any], path: Path, size: str) -> list[dict[str, list[Any]]]:
    """The section's grids: `grid` is one mapping of key -> values, or a list of them (their union)."""
    grid = section.get("grid") or {}
    listed = grid if isinstance(grid, list) else [grid]
    if not all(isinstance(g, dict) for g in listed):
        raise SfedloraError(f"{path}: {size}.grid must be a mapping of config keys to lists, or a list of such")
    for g in listed:
        for key, values in g.items():
            if not isinstance(values, list) or not values:
                raise SfedloraError(f"{path}: grid key {key} must list at least one value")
    return listed


def parse_only(items: Sequence[str]) -> dict[str, list[str]]:
    """`--only` filters: KEY=V1,V2 -> {KEY: [V1, V2]}; a key named twice keeps the values of both."""
    only: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise SfedloraError(f"--only {item!r}: expected KEY=VALUE[,VALUE...], e.g. lora.init=shared")
        only.setdefault(key.strip(), []).extend(v.strip() for v in values.split(","))
    return only



def _selected(config: Any, only: dict[str, list[str]]) -> bool:
    from sfedlora.config import dotted, to_dict

    flat = dotted(to_dict(config))
    unknown = [k for k in only if k not in flat]
    if unknown:
        raise SfedloraError(f"--only names no config key: {', '.join(unknown)} (see `sfedlora config --reference`)")
    return all(any(same_value(flat[k], t) for t in texts) for k, texts in only.items())


def plan(name: str, size: str, out: Path, extra: Sequence[str] = (),
         only: dict[str, list[str]] | None = None) -> list[PlannedRun]:
    """Expand the spec's grid into runs (validating every config before anything runs); `only` keeps the
    runs whose config matches it (parse_only)."""
    from sfedlora.config import config_path, load_config
    from sfedlora.runtime.resolve import check

    spec, section = load_spec(name, size)
    base = config_path(section.get("base"))
    fixed = [f"{k}={_value_text(v)}" for k, v in (section.get("set") or {}).items()]
    points = [dict(zip(grid, values, strict=True))
              for grid in grids(section, spec_path(name), size)
              for values in itertools.product(*grid.values())]
    also = section.get("also") or []
    if not isinstance(also, list) or not all(isinstance(a, dict) for a in also):
        raise SfedloraError(f"{spec_path(name)}: {size}.also must be a list of mappings of config keys")
    runs: list[PlannedRun] = []
    for values in [*points, *also]:
        point = [f"{k}={_value_text(v)}" for k, v in values.items()]
        label = "_".join(_slug(k, v) for k, v in values.items()) or "run"
        overrides = [*fixed, *point, *extra]
        config = load_config(base, overrides)
        check(config)  # fail before the first run, not in the middle of the sweep
        if any(r.label == label for r in runs):
            raise SfedloraError(f"{spec_path(name)}: two runs of the sweep are both named {label}")
        if only and not _selected(config, only):
            continue
        runs.append(PlannedRun(folder=out / label, base=base, overrides=overrides, label=label))
    if only and not runs:
        wanted = " ".join(f"{k}={','.join(v)}" for k, v in only.items())
        raise SfedloraError(f"--only {wanted} matches no run of {spec_path(name)} ({size})")
    return runs


def run_sweep(runs: list[PlannedRun], echo: Any = print) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from sfedlora.runtime import lock, rundir
    from sfedlora.simulation import Simulation
    from sfedlora.tools.report import run_figures

    summaries = []
    conflicts = [why for r in runs if r.done and (why := stale(r))]
    if conflicts:
        raise SfedloraError("; ".join(conflicts) + ". Move or delete those folders, or sweep into another --out")
    changed = stale_data([r for r in runs if r.done])
    if changed:
        raise SfedloraError(f"{len(changed)} finished run(s) were made on other data than their config reads now "
                            f"(a changed data file?): {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}. "
                            "Their results are stale: move or delete those folders, or sweep into another --out")
    todo = [r for r in runs if not r.done]
    echo(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    bar = tqdm(todo, desc="runs", unit="run")
    for run in bar:
        bar.set_postfix_str(run.label)
        try:
            with lock.hold(run.folder):  # a sweep started twice does not run one folder twice
                if run.done:  # finished by another process meanwhile
                    continue
                rundir.clear(run.folder)  # unfinished: no summary.json
                sim = Simulation(run.config, run.folder, echo=lambda s: None, progress=False,
                                 group=run.folder.parent.name)
                summary = sim.run(close=False)
                sim.log.close(run_figures(run.folder) if sim.log.trackers else [])
        except lock.Busy:  # another process of this sweep is running it
            bar.write(f"  {run.label}: running in another process, left to it")
            continue
        summaries.append(summary)
        best = summary["personal"]["best"]
        value = best["test"]["weighted"] if best and isinstance(best["test"], dict) else None
        bar.write(f"  {run.label}: best-on-val personal test {summary['metric']} = "
                  f"{value if value is None else round(value, 4)} (round {best['round'] if best else '-'}), "
                  f"{summary['wall_s']:.0f} s")
    return summaries
