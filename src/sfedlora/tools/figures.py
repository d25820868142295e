"""Figures of run arms: a metric per round (one line per arm, or per value of a setting with panels for the
others: mean over seeds, a band of one std), and against rank or N (each rule's final metric with its 95%
interval; gradient norms of A and B, the SFed-LoRA paper's figures 3 and 4). Reads only what tools.arms gives."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfedlora.runtime.records import client_values, clients_mean
from sfedlora.tools.arms import Arm, Run
from sfedlora.tools.stats import interval

Curve = Callable[[Run], tuple[list[float], list[float]]]


def weighted(value: Any) -> float | None:
    if value is None:
        return None
    return float(value["weighted"] if isinstance(value, dict) else value)


def metric_curve(metric: str, scope: str = "personal") -> Curve:
    """The test metric per evaluated round (personal: the mean over clients weighted by what they evaluated)."""
    def curve(run: Run) -> tuple[list[float], list[float]]:
        pts = [(r["round"], y) for r in run.records
               if r.get("eval") and r["eval"].get(scope) and (y := weighted(r["eval"][scope]["test"][metric]))
               is not None]
        return [p[0] for p in pts], [p[1] for p in pts]
    return curve


def grad_norm_curve(run: Run) -> tuple[list[float], list[float]]:
    """Per local iteration: sqrt(|grad A|^2 + |grad B|^2), mean over the round's clients."""
    xs, ys = [], []
    for r in run.records:
        if r["round"] == 0 or not r.get("grad_norm_A_steps"):
            continue
        per_client = list(zip(client_values(r["grad_norm_A_steps"]), client_values(r["grad_norm_B_steps"]),
                              strict=True))
        steps = len(per_client[0][0])
        for k in range(steps):
            norms = [math.sqrt(a[k] ** 2 + b[k] ** 2) for a, b in per_client]
            xs.append((r["round"] - 1) * steps + k + 1)
            ys.append(sum(norms) / len(norms))
    return xs, ys


def record_curve(key: str, absolute: bool = False, per_client: bool = True) -> Curve:
    def curve(run: Run) -> tuple[list[float], list[float]]:
        pts = []
        for r in run.records:
            y = (clients_mean(r.get(key)) if per_client else r.get(key)) if r["round"] > 0 else None
            if y is not None:
                pts.append((r["round"], abs(y) if absolute else y))
        return [p[0] for p in pts], [p[1] for p in pts]
    return curve


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _average(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds at the x values all curves share."""
    shared = sorted(set.intersection(*(set(c[0]) for c in curves))) if curves else []
    means, stds = [], []
    for x in shared:
        m, s = mean_std([c[1][c[0].index(x)] for c in curves])
        means.append(m)
        stds.append(s)
    return shared, means, stds


def plot_arms(arms: list[Arm], curve: Curve, line: str | None, title: str, ylabel: str, xlabel: str, path: Path,
              logy: bool = False) -> Path:
    """One line per arm: panels by the label's other settings when `line` is one of its settings (lines are
    then its values), else every arm in one panel. Mean over the arm's seeds, a band of one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def panel_of(arm: Arm) -> str:
        return " ".join(f"{k}={arm.show(k)}" for k in arm.label if k != line) if line else ""

    panels = list(dict.fromkeys(panel_of(a) for a in arms))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 4.2 * len(panels)), 3.8), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, panel in zip(axes[0], panels, strict=True):
        members = [a for a in arms if panel_of(a) == panel]
        for i, arm in enumerate(members):
            xs, ys, sd = _average([curve(r) for r in arm.runs])
            if not xs:
                continue
            color = cmap(0.85 * i / max(1, len(members) - 1))
            name = f"{line} {arm.show(line)}" if line else arm.name()
            ax.plot(xs, ys, label=f"{name} (n={len(arm.runs)})", color=color, lw=1.6)
            if any(sd):
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                                [y + s for y, s in zip(ys, sd, strict=True)], color=color, alpha=0.15)
        ax.set_title(panel, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title + " (mean over seeds, band: one std)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def best_test(run: Run, scope: str = "personal") -> float | None:
    """The run's test metric at its best-on-validation round."""
    best = run.summary.get(scope, {}).get("best")
    return weighted(best["test"]) if best else None


def mean_grad_norm(run: Run, key: str) -> float | None:
    """`grad_norm_A` or `grad_norm_B`: the mean over trained rounds of the mean over the round's clients."""
    per_round = [m for r in run.records if r["round"] > 0 and (m := clients_mean(r.get(key))) is not None]
    return statistics.fmean(per_round) if per_round else None


AGAINST = {"rank": "rank r", "clients": "number of clients N"}  # the settings final results are drawn against


def _log2_axes(ax: Any, xlabel: str, ylabel: str, logy: bool) -> None:
    """A panel against rank or N: log2 x axis, the labels, a grid and the legend."""
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def numeric_axis(arms: list[Arm], axis: str) -> bool:
    """Whether the arms differ in `axis` and every arm has one number for it (not heterogeneous ranks)."""
    return bool(arms) and axis in arms[0].label and not any(isinstance(a.label[axis], str) for a in arms)


def line_of_axis(axis: str) -> Callable[[Arm], str]:
    return lambda arm: " ".join(f"{k}={v}" for k, v in arm.label.items() if k not in (axis, "lr"))


def grad_norm_points(arms: list[Arm], axis: str, key: str) -> list[tuple[Any, float]]:
    """(value of `axis`, mean over seeds of each run's mean `key` gradient norm) per arm, in `axis` order."""
    points = []
    for arm in sorted(arms, key=lambda a: a.label[axis]):
        values = [v for r in arm.runs if (v := mean_grad_norm(r, key)) is not None and v > 0]
        if values:
            points.append((arm.label[axis], statistics.fmean(values)))
    return points


def plot_against(arms: list[Arm], metric: str, out: Path, axis: str = "rank",
                 logy: bool = False) -> list[tuple[str, Path]]:
    """Where arms differ in `axis` (rank or clients): each other setting combination's final metric against it
    (mean over seeds, error bars: the 95% interval), and the gradient norms of A and B against it (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not numeric_axis(arms, axis):
        return []
    line_of = line_of_axis(axis)
    lines = list(dict.fromkeys(line_of(a) for a in arms))
    cmap = plt.get_cmap("tab10")
    figures = []
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, name in enumerate(lines):
        pts = []
        for arm in sorted((a for a in arms if line_of(a) == name), key=lambda a: a.label[axis]):
            values = [v for r in arm.runs if (v := best_test(r)) is not None]
            if values:
                iv = interval(values)
                pts.append((arm.label[axis], iv.mean, 0.0 if math.isnan(iv.half) else iv.half))
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        color=cmap(i % 10), label=name or "all")
    _log2_axes(ax, AGAINST[axis], f"personalised test {metric} (best on val)", logy)
    ax.set_title(f"Final {metric} against {AGAINST[axis]} (mean over seeds, bars: 95% interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{metric}_vs_{axis}.png", dpi=110)
    plt.close(fig)
    figures.append((f"Personalised test {metric} against {AGAINST[axis]}, per rule", out / f"{metric}_vs_{axis}.png"))
    figures += plot_grad_norms(arms, out / f"grad_norms_vs_{axis}.png",
                               f"Gradient norms of A and B against {AGAINST[axis]}", axis)
    return figures


def plot_grad_norms(arms: list[Arm], path: Path, title: str, axis: str = "rank") -> list[tuple[str, Path]]:
    """The mean gradient norms of A and B against `axis` (log-log), one line per other setting combination but
    the learning rate (mean over seeds); nothing where no arm trained adapters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [a for a in arms if all(r.trained for r in a.runs)]
    if not numeric_axis(trained, axis):
        return []
    line_of = line_of_axis(axis)
    lines = list(dict.fromkeys(line_of(a) for a in trained))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    for ax, key in zip(axes, ("grad_norm_A", "grad_norm_B"), strict=True):
        for i, name in enumerate(lines):
            norms = grad_norm_points([a for a in trained if line_of(a) == name], axis, key)
            if norms:
                ax.plot([p[0] for p in norms], [p[1] for p in norms], marker="o", color=cmap(i % 10),
                        label=name or "all")
        _log2_axes(ax, AGAINST[axis], f"|{key[-1]} gradient| (mean over rounds and clients)", logy=True)
    fig.suptitle(f"{title} (mean over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [(title, path)]
