"""Numbers behind two of the report's questions, as tables a reader can quote:

- How gradient norms scale with rank or N (the SFed-LoRA paper's figures 3-4): per line of the figure (one
  rule and its other settings), the mean |grad A| and |grad B| at the smallest and largest value, and the
  least-squares log-log slope k of |grad| ~ x^k over all values (alpha/r predicts k = -1/2 against rank,
  alpha/sqrt(r) and alpha*sqrt(N/r) k = 0; under AdamW the rate, not only the rule, moves them).
- What the adaptive rule measured (lora.scaling: adaptive): N_eff per adapted module at the first
  aggregation, against the N clients that were averaged (independent inits: about N; a shared init: about 1),
  and gamma over every round and module relative to rsLoRA's alpha/sqrt(r) (1 before the first aggregation,
  sqrt(N_eff) after it).
"""

from __future__ import annotations

import math
import statistics

from sfedlora.runtime.records import client_values
from sfedlora.tools.arms import Arm, Run
from sfedlora.tools.figures import grad_norm_points, line_of_axis, numeric_axis
from sfedlora.tools.stats import slope


def grad_norm_slopes(arms: list[Arm], axis: str) -> tuple[list[str], list[list[str]]] | None:
    """Per line (an arm's settings but `axis` and the rate): |grad A|, |grad B| (mean over seeds of each run's
    mean over rounds and clients) at the ends of `axis`, and their log-log slopes; None when `axis` does
    not vary or no arm trained adapters."""
    trained = [a for a in arms if all(r.trained for r in a.runs)]
    if not numeric_axis(trained, axis):
        return None
    line_of = line_of_axis(axis)
    body = []
    for name in dict.fromkeys(line_of(a) for a in trained):
        row = [name or "all"]
        for key in ("grad_norm_A", "grad_norm_B"):
            points = grad_norm_points([a for a in trained if line_of(a) == name], axis, key)
            if len(points) < 2:
                row += ["-", "-"]
                continue
            k = slope([p[0] for p in points], [p[1] for p in points])
            row += [f"{points[0][1]:.3g} at {points[0][0]} -> {points[-1][1]:.3g} at {points[-1][0]}",
                    "-" if math.isnan(k) else f"{k:+.2f}"]
        body.append(row)
    return ["line", "|grad A|", "slope A (log-log)", "|grad B|", "slope B (log-log)"], body


def _first_measure(run: Run) -> tuple[int, list[float]] | None:
    """(clients averaged, N_eff per module) at the run's first aggregation; None if it measured none."""
    for record in run.records:
        n_eff = (record.get("adaptive") or {}).get("n_eff")
        if n_eff:
            return int(record.get("n_averaged") or len(record.get("participants") or [])), list(n_eff.values())
    return None


def _gamma_ratios(run: Run) -> list[float]:
    """gamma / rsLoRA's alpha/sqrt(r), per module (after the first aggregation) or client (before), every round."""
    rs = float(run.config["lora"]["alpha"]) / math.sqrt(float(run.settings()["rank"]))
    ratios: list[float] = []
    for record in run.records:
        per_module = (record.get("adaptive") or {}).get("gamma_trained") or {}
        values = list(per_module.values()) or client_values(record.get("gamma"))
        ratios += [g / rs for g in values]
    return ratios


def adaptive_table(arms: list[Arm]) -> tuple[list[str], list[list[str]]] | None:
    """What the adaptive rule measured, per arm that used it (heterogeneous ranks left out); None if none did."""
    body = []
    for arm in arms:
        runs = [r for r in arm.runs if r.resolved.get("scaling") == "adaptive"]
        if not runs or isinstance(arm.settings.get("rank"), str):
            continue
        measured = [m for r in runs if (m := _first_measure(r)) is not None]
        if not measured:
            continue
        n_eff = [v for _, values in measured for v in values]
        counts = sorted({n for n, _ in measured})
        ratio = statistics.fmean(n_eff) / statistics.fmean(n for n, values in measured for _ in values)
        gammas = [g for r in runs for g in _gamma_ratios(r)]
        body.append([" ".join(f"{k}={v}" for k, v in arm.label.items()) or "all", ",".join(map(str, counts)),
                     str(len(measured)), f"{statistics.fmean(n_eff):.3f}", f"{min(n_eff):.3f} .. {max(n_eff):.3f}",
                     f"{ratio:.3f}", f"{min(gammas):.3f} .. {max(gammas):.3f}"])
    if not body:
        return None
    return ["arm", "N averaged", "runs", "N_eff at 1st aggregation (mean over modules, seeds)", "min .. max",
            "N_eff / N", "gamma / rsLoRA's, every round and module"], body


__all__ = ["grad_norm_slopes", "adaptive_table"]
