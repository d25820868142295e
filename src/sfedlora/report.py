"""Reports from run folders: PNG figures, markdown tables and one self-contained HTML page.

Reads only each run's config.yaml, metrics.jsonl and summary.json. Figures appear when the runs vary
the quantity they are about: rank (metric curves, gradient norms per iteration, adapter output
moments), number of clients, scaling rule, adapter placement. Curves are means over seeds.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sfedlora.errors import SfedloraError
from sfedlora.metrics import PRIMARY, read_jsonl


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def method(self) -> str:
        return self.config["fed"]["method"]

    @property
    def task(self) -> str:
        return self.config["resolved"]["task"]

    def key(self, name: str) -> Any:
        """A run attribute by short name, as used to group lines and panels."""
        lora, fed, res = self.config["lora"], self.config["fed"], self.config["resolved"]
        values = {
            "method": fed["method"] if res["scaling"] != "none" else "head-only (gamma=0)",
            "rank": lora["rank"], "clients": res["n_averaged"], "seed": self.config["seed"],
            "targets": lora["targets"] if isinstance(lora["targets"], str) else ",".join(lora["targets"]),
            "partition": self.config["data"]["partition"], "optimizer": self.config["train"]["optimizer"],
            "scaling": res["scaling"] if res["scaling"] != "custom" else
            f"custom a={lora['scaling_a']:g} b={lora['scaling_b']:g}",
            "ranks": ",".join(str(r) for r in res.get("ranks", [lora["rank"]])),
        }
        return values[name]


def find_runs(dirs: list[Path]) -> list[Run]:
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


def _personal(record: dict[str, Any], metric: str, split: str = "test") -> float | None:
    ev = record.get("eval")
    if not ev:
        return None
    value = ev["personal"][split][metric]
    return value["weighted"] if isinstance(value, dict) else value


def _mean_clients(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def metric_curve(run: Run) -> tuple[list[float], list[float]]:
    metric, _ = PRIMARY[run.task]
    pts = [(r["round"], y) for r in run.records if (y := _personal(r, metric)) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


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


def moment_curve(key: str) -> Callable[[Run], tuple[list[float], list[float]]]:
    def curve(run: Run) -> tuple[list[float], list[float]]:
        pts = [(r["round"], abs(y) if key == "adapter_out_mean" else y) for r in run.records
               if r["round"] > 0 and (y := _mean_clients(r[key])) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]
    return curve


def spectrum_curve(key: str) -> Callable[[Run], tuple[list[float], list[float]]]:
    def curve(run: Run) -> tuple[list[float], list[float]]:
        pts = [(r["round"], r[key]) for r in run.records if r["round"] > 0 and r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]
    return curve


def _average(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds at the x values all curves share."""
    shared = sorted(set.intersection(*(set(c[0]) for c in curves))) if curves else []
    means, stds = [], []
    for x in shared:
        ys = [c[1][c[0].index(x)] for c in curves]
        means.append(statistics.fmean(ys))
        stds.append(statistics.stdev(ys) if len(ys) > 1 else 0.0)
    return shared, means, stds


def plot_panels(runs: list[Run], curve: Callable[[Run], tuple[list[float], list[float]]], line: str, title: str,
                ylabel: str, xlabel: str, path: Path, logy: bool = False, panel: str = "method") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({r.key(panel) for r in runs}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 4.2 * len(panels)), 3.6), squeeze=False, sharey=True)
    for ax, p in zip(axes[0], panels):
        members = [r for r in runs if r.key(panel) == p]
        values = sorted({r.key(line) for r in members}, key=lambda v: (isinstance(v, str), v))
        cmap = plt.get_cmap("viridis")
        for i, v in enumerate(values):
            xs, ys, sd = _average([curve(r) for r in members if r.key(line) == v])
            if not xs:
                continue
            color = cmap(0.85 * i / max(1, len(values) - 1))
            ax.plot(xs, ys, label=f"{line} {v}", color=color, lw=1.6)
            if any(sd):
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], color=color,
                                alpha=0.15)
        ax.set_title(f"{panel} {p}" if panel != "method" else str(p))
        ax.set_xlabel(xlabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_rows(runs: list[Run], row: str, col: str) -> tuple[list[str], list[list[str]]]:
    """Best-on-validation personalised test metric, mean +- std over seeds, per (row, col)."""
    cells: dict[tuple[Any, Any], list[float]] = defaultdict(list)
    for r in runs:
        best = r.summary["personal"]["best"]
        if best:
            value = best["test"]["weighted"] if isinstance(best["test"], dict) else best["test"]
            cells[(r.key(row), r.key(col))].append(value)
    rows = sorted({k[0] for k in cells}, key=str)
    cols = sorted({k[1] for k in cells}, key=lambda v: (isinstance(v, str), v))
    body = []
    for rv in rows:
        line = [str(rv)]
        for cv in cols:
            vs = cells.get((rv, cv), [])
            if not vs:
                line.append("-")
            elif len(vs) == 1:
                line.append(f"{vs[0]:.4f}")
            else:
                line.append(f"{statistics.fmean(vs):.4f} ± {statistics.stdev(vs):.4f} (n={len(vs)})")
        body.append(line)
    return [row, *[f"{col} {c}" for c in cols]], body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _varies(runs: list[Run], key: str) -> bool:
    return len({r.key(key) for r in runs}) > 1


OWN_FIGURES = ("accuracy_", "perplexity_", "grad_norm_by_", "adapter_out_", "energy_beyond", "effective_rank")


def build_report(dirs: list[Path], out: Path) -> Path:
    runs = find_runs(dirs)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # figures of an earlier report into the same folder, not this one's
        if stale.name.startswith(OWN_FIGURES):
            stale.unlink()
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise SfedloraError(f"runs of different task types ({', '.join(sorted(tasks))}): report them separately")
    metric, higher = PRIMARY[tasks.pop()]
    logy_metric = metric == "perplexity"
    figures: list[tuple[str, Path]] = []
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    for line, what in (("rank", "rank"), ("clients", "number of clients N"), ("scaling", "scaling rule"),
                       ("targets", "adapter placement")):
        if not _varies(runs, line):
            continue
        trained = [r for r in runs if r.config["resolved"]["scaling"] != "none"]
        if line == "scaling" and _varies(trained, "method"):
            continue  # scaling differs because methods differ: the method panels already show it
        figures.append((f"Personalised test {metric} per round, by {what}", plot_panels(
            runs, metric_curve, line, f"personalised test {metric} (sample-weighted mean over clients)", metric,
            "round", out / f"{metric}_by_{line}.png", logy=logy_metric)))
        trained_runs = [r for r in runs if r.config["resolved"]["scaling"] != "none"]  # gamma = 0: no gradients
        figures.append((f"Gradient norm per local iteration, by {what}", plot_panels(
            trained_runs, grad_norm_curve, line, "mean per-client gradient norm sqrt(|dA|^2 + |dB|^2), before clipping",
            "gradient norm", "local iteration", out / f"grad_norm_by_{line}.png", logy=True)))
        if line in ("rank", "scaling"):
            for key, label in (("adapter_out_var", "variance"), ("adapter_out_mean", "|mean|")):
                figures.append((f"Adapter output {label} per round, by {what}", plot_panels(
                    trained_runs, moment_curve(key), line, f"adapter output {label} of gamma*B*A*x (mean over clients)",
                    label, "round", out / f"{key}_by_{line}.png", logy=True)))
        header, body = table_rows(runs, "method" if line != "scaling" else "scaling", line if line != "scaling"
                                  else "rank")
        tables.append((f"Best-on-validation personalised test {metric} by method and {what}", header, body))
    hetero = [r for r in runs if len(set(r.config["resolved"].get("ranks", [0]))) > 1]
    if hetero:
        r_min = min(min(r.config["resolved"]["ranks"]) for r in hetero)
        figures.append(("Rank collapse: energy of the aggregated update beyond r_min, per round", plot_panels(
            hetero, spectrum_curve("energy_beyond_rmin"), "method",
            f"share of ||dW||^2 beyond r_min = {r_min} (mean over modules)",
            "energy share beyond r_min", "round", out / "energy_beyond_rmin.png", logy=True, panel="ranks")))
        figures.append(("Effective rank of the aggregated update, per round", plot_panels(
            hetero, spectrum_curve("effective_rank"), "method", "effective rank exp(H(s^2 / sum s^2))",
            "effective rank", "round", out / "effective_rank.png", panel="ranks")))
        figures.append((f"Personalised test {metric} per round, heterogeneous ranks", plot_panels(
            hetero, metric_curve, "method", f"personalised test {metric}", metric, "round",
            out / f"{metric}_heterogeneous.png", logy=logy_metric, panel="ranks")))
        header, body = table_rows(hetero, "method", "ranks")
        tables.append((f"Heterogeneous ranks: best-on-validation personalised test {metric}", header, body))
    if _varies(runs, "partition"):
        for part in sorted({r.key("partition") for r in runs}):
            subset = [r for r in runs if r.key("partition") == part]
            header, body = table_rows(subset, "method", "rank")
            tables.append((f"{part}: best-on-validation personalised test {metric} (mean ± std over seeds)",
                           header, body))
    if not tables:
        header, body = table_rows(runs, "method", "rank")
        tables.append((f"Best-on-validation personalised test {metric}", header, body))
    md = [f"# sfedlora report\n\n{len(runs)} runs from {', '.join(map(str, dirs))}. Metric: {metric} "
          f"({'higher' if higher else 'lower'} is better). Personalised = each client's adapters on its own "
          f"test split; best round chosen on validation.\n"]
    for title, header, body in tables:
        md.append(f"## {title}\n\n{markdown(header, body)}\n")
    for title, path in figures:
        md.append(f"## {title}\n\n![{title}]({path.name})\n")
    (out / "report.md").write_text("\n".join(md))
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>sfedlora report</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
            f"<h1>sfedlora report</h1><p>{html.escape(md[0].split(chr(10), 2)[2])}</p>"]
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
