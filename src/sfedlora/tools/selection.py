"""Choices a report makes on validation, never on test: each arm's learning rate, under one of three protocols,
and the reference arm of paired differences.

Arms that differ only in the learning rate (`train.lr`) form one candidate group. The rate protocols
(`sfedlora report --rates`), all read from the same grid of runs:

  per-arm   each group keeps its rate with the best mean (over seeds) best-on-validation personalised validation
            metric: each rule at each rank (or N) tuned on its own
  transfer  each rule's rate is chosen that way at one reference value of an axis (rank=8, say) and then used at
            every value of that axis: whether a rate found at a small rank still serves at a large one
  fixed     one rate for every group (the SFed-LoRA paper's protocol, with SGD): the rules differ in their
            effective step size

At one rate the rules differ mainly in effective step size, so a rule can look better only because the rate
suits it: per-arm removes that; transfer and fixed measure it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sfedlora.errors import SfedloraError
from sfedlora.tools.arms import Arm, Run, sort_key

LR = "lr"
PROTOCOLS = ("per-arm", "transfer", "fixed")


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
    chosen: Any  # the rate kept (None: no candidate has a validation metric)
    how: str = "chosen on val"  # how: chosen on val / chosen on val at AXIS=VALUE / fixed


def _groups(arms: Sequence[Arm], leave_out: Sequence[str]) -> dict[tuple, list[Arm]]:
    """Arms by their settings but those in `leave_out`, ordered by those settings (ranks as numbers): not by
    where each first appears among arms sorted with the rate, which puts a rank run at fewer rates last."""
    out: dict[tuple, list[Arm]] = {}
    for arm in arms:
        out.setdefault(tuple((k, repr(v)) for k, v in arm.label.items() if k not in leave_out), []).append(arm)
    return dict(sorted(out.items(), key=lambda kv: [sort_key(v) for k, v in kv[1][0].label.items()
                                                    if k not in leave_out]))


def _best(members: Sequence[Arm], higher: bool) -> Arm | None:
    valid = [(a, v) for a in members if (v := _mean_val(a)) is not None]
    return (max if higher else min)(valid, key=lambda av: av[1])[0] if valid else None


def same(value: Any, given: Any) -> bool:
    """A label value equal to one given as text (a number compared as a number: `0.1` is 0.1, `8` is 8)."""
    try:
        return float(value) == float(given)
    except (TypeError, ValueError):
        return str(value) == str(given)


def pick_rates(arms: Sequence[Arm], higher: bool, protocol: str = "per-arm", at: tuple[str, str] | None = None,
               rate: Any = None) -> tuple[list[Arm], list[RateChoice]]:
    """Per group of arms equal in everything but `lr`, the arm at the rate the protocol gives (module docstring):
    `per-arm` its best mean validation metric; `transfer` the rate with the best one at `at` = (axis, value) among
    the arms equal in all but the rate and that axis; `fixed` the rate `rate` (None: the one rate every group ran,
    where there is exactly one). A group that did not run its rate is left out, its rates still in the choices.
    Arms without an `lr` setting in their label pass unchanged."""
    if protocol not in PROTOCOLS:
        raise SfedloraError(f"unknown rate protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not arms or LR not in arms[0].label:
        return list(arms), []
    wanted: dict[int, Any] = {}  # by arm identity: the rate its group is to be reported at, and how it was chosen
    how = "chosen on val"
    if protocol == "transfer":
        if at is None or at[0] not in arms[0].label or at[0] == LR:
            raise SfedloraError("--rates transfer needs --rate-at AXIS=VALUE, an axis the arms differ in (e.g. "
                                f"rank=8); they differ in {', '.join(k for k in arms[0].label if k != LR)}")
        axis, value = at
        how = f"chosen on val at {axis}={value}"
        for members in _groups(arms, (LR, axis)).values():
            best = _best([a for a in members if same(a.label[axis], value)], higher)
            for a in members:
                wanted[id(a)] = None if best is None else best.label[LR]
    elif protocol == "fixed":
        if rate is None:
            shared = _shared_rates(arms)
            if len(shared) != 1:
                raise SfedloraError("--rates fixed needs --rate LR: every group ran "
                                    + (", ".join(map(str, sorted(shared))) if shared else "no common rate"))
            rate = shared.pop()
        how = "fixed"
        ran = {a.label[LR] for a in arms}
        fixed = next((r for r in ran if same(r, rate)), None)
        if fixed is None:
            raise SfedloraError(f"--rate {rate}: no arm ran it; the rates run are {', '.join(map(str, sorted(ran)))}")
        wanted = {id(a): fixed for a in arms}
    kept, choices = [], []
    for key, members in _groups(arms, (LR,)).items():
        best = _best(members, higher) if protocol == "per-arm" else next(
            (a for a in members if wanted.get(id(a)) is not None and same(a.label[LR], wanted[id(a)])), None)
        if best is None and protocol == "per-arm":  # no candidate has a validation metric
            continue
        chosen = best.label[LR] if best is not None else wanted.get(id(members[0]))
        choices.append(RateChoice(group=" ".join(f"{k}={v}" for k, v in key) or "all runs",
                                  candidates=[(a.label[LR], _mean_val(a), len(a.runs)) for a in members],
                                  chosen=chosen, how=how))
        if best is not None:
            kept.append(replace(best, marks={**best.marks, LR: how}) if len(members) > 1 or protocol != "per-arm"
                        else best)
    return kept, choices


def _shared_rates(arms: Sequence[Arm]) -> set[Any]:
    groups = [{a.label[LR] for a in members} for members in _groups(arms, (LR,)).values()]
    return set.intersection(*groups) if groups else set()


def common_rate(arms: Sequence[Arm]) -> Any:
    """The smallest learning rate that every group of arms equal in all but the rate ran (None: no such rate,
    or no `lr` setting)."""
    shared = _shared_rates(arms) if arms and LR in arms[0].label else set()
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
