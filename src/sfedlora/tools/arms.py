"""Finished runs read from their folders, and grouped into arms: runs whose settings are equal in everything
but the seed. An arm's spread is its seed-to-seed spread; runs that differ in any other setting (data,
partition, adapter placement, precision, ...) are never averaged together.

A run's settings are its config.yaml flattened to dotted keys, with what `auto` became in its place
(precision, scaling rule, init) and one `rank` key: the rank, or the set of ranks of a heterogeneous run
("2,4,8"). A key the run's config.yaml lacks (written by a version before the key existed) takes its
default, so runs of one sweep made across versions still group together. Keys that do not change results
(their schema option says result=False: seed, name, checkpointing, group sizes, generation samples, gradient
checkpointing, the client store, trackers, compilation) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfedlora.config import RunConfig, dotted, not_results, same_value, to_dict
from sfedlora.errors import SfedloraError
from sfedlora.runtime.records import read_jsonl

NOT_RESULTS = tuple(not_results())  # the schema's options marked result=False (seed, checkpointing, trackers...)
RANK_KEYS = ("lora.rank", "lora.ranks", "lora.rank_set")
HEAD_ONLY = "head-only (gamma=0)"
# Keys dropped from an arm's label when the other varying keys determine them (e.g. a method's own scaling).
DERIVED = ("lora.scaling", "lora.init", "lora.rank_rule", "lora.scaling_n")
# The learning rate is chosen per group of arms equal in all else (tools.selection): it never counts as telling
# a derived key apart, or two rules each run at its own rates would fall into one group and all but one vanish.
RATE = "train.lr"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def resolved(self) -> dict[str, Any]:
        return self.config.get("resolved", {})

    @property
    def task(self) -> str:
        return str(self.resolved["task"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def trained(self) -> bool:
        """False for the head-only baseline (gamma = 0: the adapters get no gradient)."""
        return self.resolved.get("scaling") != "none"

    def settings(self) -> dict[str, Any]:
        recorded = {**dotted(to_dict(RunConfig())), **dotted({k: v for k, v in self.config.items() if k != "resolved"})}
        flat = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in recorded.items()}
        res = self.resolved
        for key in RANK_KEYS:
            flat.pop(key, None)
        ranks = res.get("ranks") or [self.config["lora"]["rank"]]
        flat["rank"] = ranks[0] if len(set(ranks)) == 1 else ",".join(str(r) for r in sorted(set(ranks)))
        for key, name in (("model.precision", "precision"), ("lora.scaling", "scaling"), ("lora.init", "init")):
            if name in res:
                flat[key] = res[name]
        if res.get("scaling") == "none":
            flat["fed.method"] = HEAD_ONLY
        for key in NOT_RESULTS:
            flat.pop(key, None)
        return flat


def find_runs(dirs: Sequence[Path]) -> list[Run]:
    runs = []
    for d in dirs:
        if not d.exists():
            raise SfedloraError(f"{d} does not exist")
        for summary in sorted(d.rglob("summary.json")):
            folder = summary.parent
            if not (folder / "metrics.jsonl").exists() or not (folder / "config.yaml").exists():
                continue
            runs.append(Run(folder, yaml.safe_load((folder / "config.yaml").read_text()),
                            read_jsonl(folder / "metrics.jsonl"), json.loads(summary.read_text())))
    if not runs:
        raise SfedloraError(f"no finished runs (folders with summary.json) under {', '.join(map(str, dirs))}")
    return runs


def select(runs: Sequence[Run], only: Mapping[str, Sequence[str]]) -> list[Run]:
    """The runs whose every `only` setting (a dotted config key such as train.optimizer, or its last part:
    optimizer, lr, rank) is one of its values (`sfedlora report --only`, parsed as sweep's: tools.sweep.parse_only)."""
    kept = [(r, r.settings()) for r in runs]
    for key, wanted in only.items():
        names = set().union(*(flat for _, flat in kept))
        full = [key] if key in names else sorted(n for n in names if n.rsplit(".", 1)[-1] == key)
        if len(full) != 1:
            known = ", ".join(sorted(n.rsplit(".", 1)[-1] for n in names))
            raise SfedloraError(f"--only {key}: " + (f"ambiguous ({', '.join(full)}); give the dotted key" if full
                                                    else f"no such setting; settings: {known}"))
        kept = [(r, flat) for r, flat in kept if any(same_value(flat.get(full[0]), w) for w in wanted)]
        if not kept:
            raise SfedloraError(f"--only {key}={','.join(wanted)}: no run left")
    return [r for r, _ in kept]


@dataclass
class Arm:
    """Runs with equal settings, one per distinct seed."""

    settings: dict[str, Any]  # every setting of the arm
    label: dict[str, Any]  # the settings that tell it from the other arms (display name -> value)
    runs: list[Run] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)  # further runs of a seed the arm already has
    marks: dict[str, str] = field(default_factory=dict)  # a note shown after a label value (e.g. how it was chosen)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def show(self, key: str) -> str:
        """A label value as tables and figures print it, with its mark."""
        value = self.label[key]
        return f"{value} ({self.marks[key]})" if key in self.marks else str(value)

    def name(self) -> str:
        return " ".join(f"{k}={self.show(k)}" for k in self.label) or "all runs"


SPECIAL_NAMES = {"data.source": "data", "model.name": "model"}


def display_names(keys: Sequence[str]) -> dict[str, str]:
    """Short names for dotted keys: the last part, unless two keys share it; data.source is 'data' and
    model.name 'model'."""
    last = [SPECIAL_NAMES.get(k, k.rsplit(".", 1)[-1]) for k in keys]
    return {k: short if last.count(short) == 1 else k for k, short in zip(keys, last, strict=True)}


def _determined(key: str, others: Sequence[str], settings: Sequence[dict[str, Any]]) -> bool:
    """Whether the values of `others` determine the value of `key` in these settings."""
    seen: dict[tuple, Any] = {}
    for s in settings:
        ctx = tuple(repr(s.get(o)) for o in others)
        if seen.setdefault(ctx, repr(s.get(key))) != repr(s.get(key)):
            return False
    return True


def group_arms(runs: Sequence[Run]) -> tuple[list[Arm], list[str], dict[str, Any]]:
    """The arms, the dotted keys that tell them apart (in config order), and the settings every run shares."""
    all_settings = [r.settings() for r in runs]
    keys = list(dict.fromkeys(k for s in all_settings for k in s))
    varying = [k for k in keys if len({repr(s.get(k)) for s in all_settings}) > 1]
    common = {k: all_settings[0].get(k) for k in keys if k not in varying}
    shown = list(varying)
    for key in DERIVED:  # a method's own scaling, say, adds nothing to its label
        if key in shown and _determined(key, [k for k in shown if k not in (key, RATE)], all_settings):
            shown.remove(key)
    names = display_names(shown)
    arms: dict[tuple, Arm] = {}
    for run, s in zip(runs, all_settings, strict=True):
        ident = tuple(repr(s.get(k)) for k in varying)
        arm = arms.setdefault(ident, Arm(settings=s, label={names[k]: s.get(k) for k in shown}))
        if run.seed in arm.seeds:
            arm.duplicates.append(run.path)
        else:
            arm.runs.append(run)
    ordered = sorted(arms.values(), key=lambda a: [sort_key(v) for v in a.label.values()])
    return ordered, shown, common


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before text, numbers by value."""
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))
