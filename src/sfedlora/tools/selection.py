"""Choices a report makes on validation, never on test: each rule's learning rate, and the reference arm of
paired differences.

Arms that differ only in the learning rate (`train.lr`) form one candidate group; the report keeps, per
group, the arm whose mean (over seeds) best-on-validation personalised validation metric is best, and
reports its test numbers. At a fixed rate the scaling rules differ mainly in effective step size, so a
rule can look better only because the rate suits it: choosing each rule's rate on validation removes that.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sfedlora.tools.arms import Arm, Run

LR = "lr"


def val_metric(run: Run) -> float | None:
    """The run's personalised validation metric at its best-on-validation round."""
    best = run.summary.get("personal", {}).get("best")
    if not best:
        return None
    v = best["val"]
    return float(v["weighted"] if isinstance(v, dict) else v)


def _mean_val(arm: Arm) -> float | None:
    vals = [v for r in arm.runs if (v := val_metric(r)) is not None]
    return statistics.fmean(vals) if vals else None


@dataclass
class RateChoice:
    group: str  # the other settings of the candidates
    candidates: list[tuple[Any, float | None, int]]  # (lr, mean validation metric, seeds)
    chosen: Any


def pick_rates(arms: Sequence[Arm], higher: bool) -> tuple[list[Arm], list[RateChoice]]:
    """Per group of arms equal in everything but `lr`, the arm with the best mean validation metric (marked as
    chosen on validation where there was a choice). Arms without an `lr` setting in their label pass
    unchanged."""
    if not arms or LR not in arms[0].label:
        return list(arms), []
    groups: dict[tuple, list[Arm]] = {}
    for arm in arms:
        key = tuple((k, repr(v)) for k, v in arm.label.items() if k != LR)
        groups.setdefault(key, []).append(arm)
    kept, choices = [], []
    for key, members in groups.items():
        scored = [(a, _mean_val(a)) for a in members]
        valid = [(a, v) for a, v in scored if v is not None]
        if not valid:
            continue
        best = (max if higher else min)(valid, key=lambda av: av[1])[0]
        kept.append(replace(best, marks={**best.marks, LR: "chosen on val"}) if len(members) > 1 else best)
        choices.append(RateChoice(group=" ".join(f"{k}={v}" for k, v in key) or "all runs",
                                  candidates=[(a.label[LR], v, len(a.runs)) for a, v in scored],
                                  chosen=best.label[LR]))
    return kept, choices


def common_rate(arms: Sequence[Arm]) -> Any:
    """The smallest learning rate that every group of arms equal in all but the rate ran (None: no such rate,
    or no `lr` setting)."""
    groups: dict[tuple, set[Any]] = {}
    for arm in arms:
        if LR in arm.label:
            groups.setdefault(tuple((k, repr(v)) for k, v in arm.label.items() if k != LR), set()).add(arm.label[LR])
    shared = set.intersection(*groups.values()) if groups else set()
    return min(shared) if shared else None


REFERENCE_HINTS = (("method", "sfed-lora"), ("scaling", "sfed"))


def reference(arms: Sequence[Arm], wanted: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """The setting and value paired differences are taken against (each arm against the arm with that value
    and the same other settings): `wanted` (display name, value), else SFed-LoRA's (method sfed-lora, or
    scaling sfed), else None (nothing to compare)."""
    if not arms:
        return None
    keys = list(arms[0].label)
    if wanted:
        key, value = wanted
        if key not in keys or not any(str(a.label[key]) == value for a in arms):
            from sfedlora.errors import SfedloraError

            raise SfedloraError(f"--reference {key}={value}: no arm has it; the arms differ in "
                                + (", ".join(keys) or "nothing"))
        return key, value
    for key, value in REFERENCE_HINTS:
        if key in keys and any(str(a.label[key]) == value for a in arms):
            return key, value
    return None


def counterpart(arm: Arm, arms: Sequence[Arm], ref: tuple[str, str]) -> Arm | None:
    """The arm with the reference value and arm's other settings (the learning rate aside: each arm has its
    own, chosen on validation)."""
    key, value = ref
    others = {k: v for k, v in arm.label.items() if k not in (key, LR)}
    for a in arms:
        if str(a.label[key]) == value and {k: v for k, v in a.label.items() if k not in (key, LR)} == others:
            return a
    return None
