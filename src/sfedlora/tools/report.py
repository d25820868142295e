"""Reports from run folders: PNG figures, markdown tables and one self-contained HTML page.

Runs are grouped into arms (sfedlora.tools.arms): equal settings but the seed. A table row is an arm: its best-
on-validation personalised test metric (and last round's, and the global model's), mean and standard
deviation over its distinct seeds, with the seed count. Figures always include the metric per round of
every arm; where the arms vary in rank, number of clients, scaling rule or adapter placement, figures with
one line per value of that setting and one panel per combination of the others; heterogeneous-rank runs add
the rank-collapse figures. Reads only each run's config.yaml, metrics.jsonl and summary.json.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfedlora.core.metrics import PRIMARY
from sfedlora.errors import SfedloraError
from sfedlora.tools.arms import Arm, Run, display_names, find_runs, group_arms

Curve = Callable[[Run], tuple[list[float], list[float]]]


def _weighted(value: Any) -> float | None:
    if value is None:
        return None
    return float(value["weighted"] if isinstance(value, dict) else value)


def metric_curve(metric: str, scope: str = "personal") -> Curve:
    """The test metric per evaluated round (personal: the mean over clients weighted by what they evaluated)."""
    def curve(run: Run) -> tuple[list[float], list[float]]:
        pts = [(r["round"], y) for r in run.records
               if r.get("eval") and r["eval"].get(scope) and (y := _weighted(r["eval"][scope]["test"][metric]))
               is not None]
        return [p[0] for p in pts], [p[1] for p in pts]
    return curve


def _mean_clients(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def grad_norm_curve(run: Run) -> tuple[list[float], list[float]]:
    """Per local iteration: sqrt(|grad A|^2 + |grad B|^2), mean over the round's clients."""
    xs, ys = [], []
    for r in run.records:
        if r["round"] == 0 or not r.get("grad_norm_A_steps"):
            continue
        per_client = [(a, b) for a, b in zip(r["grad_norm_A_steps"], r["grad_norm_B_steps"]) if a is not None]
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
            y = (_mean_clients(r.get(key) or []) if per_client else r.get(key)) if r["round"] > 0 else None
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
        return " ".join(f"{k}={v}" for k, v in arm.label.items() if k != line) if line else ""

    panels = list(dict.fromkeys(panel_of(a) for a in arms))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 4.2 * len(panels)), 3.8), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, panel in zip(axes[0], panels):
        members = [a for a in arms if panel_of(a) == panel]
        for i, arm in enumerate(members):
            xs, ys, sd = _average([curve(r) for r in arm.runs])
            if not xs:
                continue
            color = cmap(0.85 * i / max(1, len(members) - 1))
            name = f"{line} {arm.label[line]}" if line else arm.name()
            ax.plot(xs, ys, label=f"{name} (n={len(arm.runs)})", color=color, lw=1.6)
            if any(sd):
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], color=color,
                                alpha=0.15)
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


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.4f}" if len(values) == 1 else f"{m:.4f} ± {s:.4f}"


def _best(run: Run, scope: str = "personal") -> float | None:
    best = run.summary.get(scope, {}).get("best")
    return _weighted(best["test"]) if best else None


def _last(run: Run, scope: str = "personal") -> float | None:
    last = run.summary.get(scope, {}).get("last")
    return _weighted(last["test"]) if last else None


def arms_table(arms: list[Arm]) -> tuple[list[str], list[list[str]]]:
    """One row per arm: its settings, distinct seeds, best-on-val round, personal test metric at that round
    and at the last round, and the global model's (mean ± std over seeds)."""
    label_keys = list(arms[0].label)
    glob = any(_best(r, "global") is not None for a in arms for r in a.runs)
    header = [*label_keys, "seeds", "best round(s)", "personal test (best on val)", "personal test (last round)"]
    header += ["global test (best on val)"] if glob else []
    def values(arm: Arm, pick: Callable[[Run, str], float | None], scope: str = "personal") -> list[float]:
        return [v for r in arm.runs if (v := pick(r, scope)) is not None]

    body = []
    for arm in arms:
        rounds = [r.summary["personal"]["best"]["round"] for r in arm.runs if r.summary["personal"]["best"]]
        row = [str(arm.label[k]) for k in label_keys]
        row += [str(len(arm.runs)), ", ".join(map(str, rounds)) or "-", _cell(values(arm, _best)),
                _cell(values(arm, _last))]
        row += [_cell(values(arm, _best, "global"))] if glob else []
        body.append(row)
    return header, body


def pivot_table(arms: list[Arm], rows: str, cols: str) -> tuple[list[str], list[list[str]]]:
    """Best-on-validation personal test metric, mean ± std over seeds, with `rows` down and `cols` across
    (only for arms told apart by exactly these two settings: nothing else is pooled)."""
    cells = {(a.label[rows], a.label[cols]): [v for r in a.runs if (v := _best(r)) is not None] for a in arms}
    row_vals = list(dict.fromkeys(a.label[rows] for a in arms))
    col_vals = sorted({a.label[cols] for a in arms}, key=lambda v: (isinstance(v, str), str(v).zfill(8)))
    body = [[str(rv), *(_cell(cells.get((rv, cv), [])) for cv in col_vals)] for rv in row_vals]
    return [rows, *(f"{cols} {c}" for c in col_vals)], body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


OWN_FIGURES = ("accuracy_", "perplexity_", "grad_norm_by_", "adapter_out_", "energy_beyond", "effective_rank")
BY = (("rank", "rank"), ("clients", "number of clients"), ("clients_per_round", "clients per round"),
      ("scaling", "scaling rule"), ("targets", "adapter placement"))


def _intro(runs: list[Run], arms: list[Arm], common: dict[str, Any], metric: str, higher: bool) -> str:
    shared = display_names(list(common))
    wanted = ("model.name", "data.source", "data.partition", "model.precision", "fed.method", "rank",
              "fed.clients", "fed.rounds", "lora.scaling")
    facts = ", ".join(f"{shared[k]} {common[k]}" for k in wanted if k in common)
    dupes = [p for a in arms for p in a.duplicates]
    text = (f"{len(runs)} runs in {len(arms)} arms (runs with equal settings but the seed). Metric: {metric} "
            f"({'higher' if higher else 'lower'} is better). Personal = each client's own adapters on its own "
            f"test split, averaged over clients weighted by what each evaluated; the best round is chosen on "
            f"validation. ± is the standard deviation over an arm's distinct seeds (seeds column). Shared by "
            f"all runs: {facts or 'nothing listed'}.")
    partial = [r for r in runs if r.summary.get("partial_rounds")]
    if partial:
        text += (" Partial rounds (some clients did not reply or were not evaluated; those rounds' means are over "
                 "the clients that were): " + "; ".join(f"{r.path} rounds {r.summary['partial_rounds']}"
                                                        for r in partial[:5]) + ("; ..." if len(partial) > 5 else "")
                 + ".")
    if dupes:
        text += (f" Left out, as repeats of a seed their arm already has: {len(dupes)} run(s) "
                 f"({', '.join(str(p) for p in dupes[:5])}{', ...' if len(dupes) > 5 else ''}).")
    return text


def build_report(dirs: list[Path], out: Path) -> Path:
    runs = find_runs(dirs)
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise SfedloraError(f"runs of different task types ({', '.join(sorted(tasks))}): report them separately")
    metric, higher = PRIMARY[tasks.pop()]
    arms, varying, common = group_arms(runs)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # figures of an earlier report into the same folder, not this one's
        if stale.name.startswith(OWN_FIGURES):
            stale.unlink()
    logy = metric == "perplexity"
    trained = [a for a in arms if all(r.trained for r in a.runs)]  # gamma = 0: no adapter gradients
    figures: list[tuple[str, Path]] = [(f"Personalised test {metric} per round, every arm", plot_arms(
        arms, metric_curve(metric), None, f"personalised test {metric}", metric, "round",
        out / f"{metric}_by_round.png", logy))]
    if any(_best(r, "global") is not None for a in arms for r in a.runs):
        figures.append((f"Global model's test {metric} per round", plot_arms(
            arms, metric_curve(metric, "global"), None, f"global model's test {metric} (pooled test splits)", metric,
            "round", out / f"{metric}_global_by_round.png", logy)))
    for line, what in BY:
        if line not in arms[0].label:
            continue
        figures.append((f"Personalised test {metric} per round, by {what}", plot_arms(
            arms, metric_curve(metric), line, f"personalised test {metric}", metric, "round",
            out / f"{metric}_by_{line}.png", logy)))
        if trained:
            figures.append((f"Gradient norm per local iteration, by {what}", plot_arms(
                trained, grad_norm_curve, line, "mean per-client gradient norm sqrt(|dA|^2 + |dB|^2), before clipping",
                "gradient norm", "local iteration", out / f"grad_norm_by_{line}.png", logy=True)))
        if line in ("rank", "scaling") and trained:
            for key, label in (("adapter_out_var", "variance"), ("adapter_out_mean", "|mean|")):
                figures.append((f"Adapter output {label} per round, by {what}", plot_arms(
                    trained, record_curve(key, absolute=key == "adapter_out_mean"), line,
                    f"adapter output {label} of gamma*B*A*x over real tokens (mean over clients)", label, "round",
                    out / f"{key}_by_{line}.png", logy=True)))
    hetero = [a for a in arms if isinstance(a.settings.get("rank"), str)]
    if hetero:
        for key, title, ylabel, logy_h in (
                ("energy_beyond_rmin", "Rank collapse: energy of the aggregated update beyond r_min, per round",
                 "energy share beyond r_min", True),
                ("effective_rank", "Effective rank of the aggregated update, per round", "effective rank", False)):
            figures.append((title, plot_arms(hetero, record_curve(key, per_client=False), None, title, ylabel,
                                             "round", out / f"{key}.png", logy_h)))
    header, body = arms_table(arms)
    tables = [(f"Personalised test {metric} per arm", header, body)]
    if len(arms[0].label) == 2 and len(arms) > 2:
        rows, cols = arms[0].label
        tables.append((f"Best-on-validation personalised test {metric}, {rows} by {cols}",
                       *pivot_table(arms, rows, cols)))
    intro = _intro(runs, arms, common, metric, higher)
    md = [f"# sfedlora report\n\n{intro}\n"]
    md += [f"## {title}\n\n{markdown(h, b)}\n" for title, h, b in tables]
    md += [f"## {title}\n\n![{title}]({path.name})\n" for title, path in figures]
    (out / "report.md").write_text("\n".join(md))
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>sfedlora report</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
            f"<h1>sfedlora report</h1><p>{html.escape(intro)}</p>"]
    for title, header, body in tables:
        page.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                        for r in body) + "</table>")
    for title, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        page.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    page.append("</body></html>")
    (out / "report.html").write_text("\n".join(page))
    return out / "report.html"


__all__ = ["build_report", "arms_table", "pivot_table", "find_runs"]
