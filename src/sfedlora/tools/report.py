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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfedlora.core.metrics import PRIMARY
from sfedlora.errors import SfedloraError
from sfedlora.tools.arms import Arm, Run, display_names, find_runs, group_arms, select
from sfedlora.tools.figures import (
    AGAINST,
    best_test,
    grad_norm_curve,
    metric_curve,
    plot_against,
    plot_arms,
    plot_grad_norms,
    record_curve,
    weighted,
)
from sfedlora.tools.selection import common_rate, counterpart, pick_rates, reference
from sfedlora.tools.stats import detectable, interval, paired, verdict
from sfedlora.tools.trends import adaptive_table, grad_norm_slopes


def _cell(values: Sequence[float]) -> str:
    return interval(values).text() if values else "-"


def _last(run: Run, scope: str = "personal") -> float | None:
    last = run.summary.get(scope, {}).get("last")
    return weighted(last["test"]) if last else None


BEST_COLUMN = "personal test (best on val), mean ± 95% CI"


def arms_table(arms: list[Arm], ref: tuple[str, str] | None = None,
               higher: bool = True) -> tuple[list[str], list[list[str]]]:
    """One row per arm: its settings, distinct seeds, best-on-val round, personal test metric at that round
    and at the last round, and the global model's (mean ± the 95% t-interval over seeds); with a reference
    (setting, value), the paired difference (by seed) to the arm with that value and the same other
    settings, its 95% interval, how to read it (better, worse, within noise) and the smallest difference the
    seeds could have detected (stats.detectable)."""
    label_keys = list(arms[0].label)
    glob = any(best_test(r, "global") is not None for a in arms for r in a.runs)
    header = [*label_keys, "seeds", "best round(s)", BEST_COLUMN, "personal test (last round)"]
    header += ["global test (best on val)"] if glob else []
    header += [f"Δ vs {ref[0]}={ref[1]} (paired by seed, 95% CI)", "reading",
               "smallest detectable |Δ| (95%, 80% power)"] if ref else []

    def values(arm: Arm, pick: Callable[[Run, str], float | None], scope: str = "personal") -> list[float]:
        return [v for r in arm.runs if (v := pick(r, scope)) is not None]

    def by_seed(arm: Arm) -> dict[int, float]:
        return {r.seed: v for r in arm.runs if (v := best_test(r)) is not None}

    body = []
    for arm in arms:
        rounds = [r.summary["personal"]["best"]["round"] for r in arm.runs if r.summary["personal"]["best"]]
        row = [arm.show(k) for k in label_keys]
        row += [str(len(arm.runs)), ", ".join(map(str, rounds)) or "-", _cell(values(arm, best_test)),
                _cell(values(arm, _last))]
        row += [_cell(values(arm, best_test, "global"))] if glob else []
        if ref:
            other = counterpart(arm, arms, ref)
            if other is None or other is arm:
                row += ["(reference)" if other is arm else "-", "", ""]
            else:
                diff = paired(by_seed(arm), by_seed(other))
                text = "-" if diff is None else diff.text() + ("" if diff.n == 1 else f" (n={diff.n})")  # n=1 says so
                smallest = "-" if diff is None or diff.n < 2 else f"{detectable(diff):.4f}"
                row += [text, verdict(diff, higher), smallest]
        body.append(row)
    return header, body


def pivot_table(arms: list[Arm], rows: str, cols: str) -> tuple[list[str], list[list[str]]]:
    """Best-on-validation personal test metric, mean ± the half-width of its 95% Student-t interval over seeds,
    with `rows` down and `cols` across (only for arms told apart by exactly these two settings: nothing else is
    pooled)."""
    cells = {(a.label[rows], a.label[cols]): [v for r in a.runs if (v := best_test(r)) is not None] for a in arms}
    row_vals = list(dict.fromkeys(a.label[rows] for a in arms))
    col_vals = sorted({a.label[cols] for a in arms}, key=lambda v: (isinstance(v, str), str(v).zfill(8)))
    body = [[str(rv), *(_cell(cells.get((rv, cv), [])) for cv in col_vals)] for rv in row_vals]
    return [rows, *(f"{cols} {c}" for c in col_vals)], body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


OWN_FIGURES = ("accuracy_", "perplexity_", "grad_norm_by_", "adapter_out_", "energy_beyond", "effective_rank",
               "grad_norms_vs_")
BY = (("rank", "rank"), ("clients", "number of clients"), ("clients_per_round", "clients per round"),
      ("scaling", "scaling rule"), ("targets", "adapter placement"))


def _intro(runs: list[Run], arms: list[Arm], shown: list[Arm], common: dict[str, Any], metric: str,
           higher: bool, rates: str = "each arm at its learning rate chosen on validation") -> str:
    """`arms`: every arm the runs form; `shown`: the table's rows (one rate per group where rates were chosen);
    `rates`: how the rows' rates were chosen (the rate protocol, in words)."""
    shared = display_names(list(common))
    wanted = ("model.name", "data.source", "data.partition", "model.precision", "fed.method", "rank",
              "fed.clients", "fed.rounds", "lora.scaling")
    facts = ", ".join(f"{shared[k]} {common[k]}" for k in wanted if k in common)
    if common.get("fed.dp_clipping_norm"):  # privacy: every arm's (where it differs, the arms' labels say it)
        facts += (f", server-side DP with clipping norm {common['fed.dp_clipping_norm']} and noise multiplier "
                  f"{common.get('fed.dp_noise_multiplier')}")
    elif "fed.dp_clipping_norm" in common:
        facts += ", no differential privacy"
    facts += "".join(f", {shared[k]} {common[k]}" for k in ("fed.server_optimizer", "train.prox_mu")
                     if common.get(k) not in (None, 0, 0.0, "none"))
    dupes = [p for a in arms for p in a.duplicates]
    rows = (f"{len(shown)} rows, {rates} (the other "
            f"{len(arms) - len(shown)} arms are its other rates, in the rates table, or have no validation metric)"
            if len(shown) < len(arms) else f"{len(shown)} rows, one per arm")
    text = (f"{len(runs)} runs read, in {len(arms)} arms (runs with equal settings but the seed); {rows}. "
            f"Metric: {metric} "
            f"({'higher' if higher else 'lower'} is better). Personal = each client's own adapters on its own "
            f"test split, averaged over clients weighted by what each evaluated; the best round is chosen on "
            f"validation. ± is the half-width of the 95% Student-t interval over an arm's distinct seeds (seeds "
            f"column); a paired difference whose interval contains 0 reads 'within noise', and one that is the same on "
            f"every seed (an interval of no width) gets no verdict. Shared by all runs: "
            f"{facts or 'nothing listed'}.")
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


def grid_edge(choice: Any) -> str:
    """Where a rate chosen on validation sits at an end of the rates its arm ran: the best rate may lie beyond
    the grid, so the comparison at that rate is not the one the protocol promises ('' where inside, or fixed)."""
    rated = sorted(float(lr) for lr, v, _ in choice.candidates if v is not None)
    if choice.how == "fixed" or choice.chosen is None or len(rated) < 2:
        return ""
    if float(choice.chosen) == rated[-1]:
        return "at the grid's top: the best rate may lie above it"
    if float(choice.chosen) == rated[0]:
        return "at the grid's bottom: the best rate may lie below it"
    return ""


def _rates_table(choices: list[Any]) -> tuple[list[str], list[list[str]]]:
    def mark(c: Any) -> str:
        text = "chosen" if c.how == "chosen on val" else c.how
        return f"{text}, {edge}" if (edge := grid_edge(c)) else text

    body = [[c.group, str(lr), "-" if v is None else f"{v:.4f}", str(n), mark(c) if lr == c.chosen else ""]
            for c in choices for lr, v, n in c.candidates]
    body += [[c.group, str(c.chosen), "-", "0", "not run"] for c in choices
             if c.chosen is not None and all(lr != c.chosen for lr, _, _ in c.candidates)]
    return ["arm (other settings)", "lr", "validation metric (mean over seeds)", "seeds", ""], body


def rate_protocol(rates: str, at: tuple[str, str] | None, choices: list[Any]) -> tuple[str, str]:
    """The rate protocol in words: for the rows (`each arm at ...`) and for the rates table's title."""
    if rates == "transfer" and at is not None:
        return (f"each arm at the rate chosen on validation at {at[0]}={at[1]} for its other settings, used at every "
                f"{at[0]} (rate transfer)", f"chosen on the validation metric at {at[0]}={at[1]}, then used at every "
                f"{at[0]}, never on test")
    if rates == "fixed" and choices:
        return f"every arm at lr {choices[0].chosen} (one fixed rate)", "one rate for every arm, chosen by no metric"
    return ("each arm at its learning rate chosen on validation",
            "chosen per arm on the validation metric, never on test")


def build_report(dirs: list[Path], out: Path, ref: tuple[str, str] | None = None, rates: str = "per-arm",
                 rate_at: tuple[str, str] | None = None, rate: Any = None, only: Any = None) -> Path:
    """Tables, figures, report.md and report.html for the runs under `dirs`. `ref`: the (setting, value)
    paired differences are taken against (default: SFed-LoRA's, where the arms have it); `rates`, `rate_at`,
    `rate`: the rate protocol (tools.selection: per-arm, transfer at rate_at = (axis, value), or fixed at `rate`);
    `only`: (setting, values) the runs must have (tools.arms.select)."""
    runs = select(find_runs(dirs), only or {})
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise SfedloraError(f"runs of different task types ({', '.join(sorted(tasks))}): report them separately")
    metric, higher = PRIMARY[tasks.pop()]
    arms, varying, common = group_arms(runs)
    every_rate = arms
    arms, rate_choices = pick_rates(arms, higher, rates, rate_at, rate)  # the rates the protocol gives
    rows_text, rates_title = rate_protocol(rates, rate_at, rate_choices)
    ref = reference(arms, ref)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # figures of an earlier report into the same folder, not this one's
        if stale.name.startswith(OWN_FIGURES):
            stale.unlink()
    logy = metric == "perplexity"
    trained = [a for a in arms if all(r.trained for r in a.runs)]  # gamma = 0: no adapter gradients
    figures: list[tuple[str, Path]] = [(f"Personalised test {metric} per round, every arm", plot_arms(
        arms, metric_curve(metric), None, f"personalised test {metric}", metric, "round",
        out / f"{metric}_by_round.png", logy))]
    if any(best_test(r, "global") is not None for a in arms for r in a.runs):
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
    fixed = common_rate(every_rate) if rate_choices else None
    at_fixed = [a for a in every_rate if a.label["lr"] == fixed] if fixed is not None else []
    for axis, what in AGAINST.items():
        figures += plot_against(arms, metric, out, axis, logy)
        if at_fixed:  # the gradients at the chosen rates mix rate and rule: also at one rate every rule ran
            figures += plot_grad_norms(at_fixed, out / f"grad_norms_vs_{axis}_fixed_lr.png",
                                       f"Gradient norms of A and B against {what}, every rule at lr {fixed}", axis)
    hetero = [a for a in arms if isinstance(a.settings.get("rank"), str)]
    if hetero:
        for key, title, ylabel, logy_h in (
                ("energy_beyond_rmin", "Rank collapse: energy of the aggregated update beyond r_min, per round",
                 "energy share beyond r_min", True),
                ("effective_rank", "Effective rank of the aggregated update, per round", "effective rank", False)):
            figures.append((title, plot_arms(hetero, record_curve(key, per_client=False), None, title, ylabel,
                                             "round", out / f"{key}.png", logy_h)))
    header, body = arms_table(arms, ref, higher)
    tables = [(f"Personalised test {metric} per arm" + (f" ({rows_text})" if rate_choices else ""), header, body)]
    if rate_choices:
        tables.append((f"Learning rates: {rates_title}", *_rates_table(rate_choices)))
    for axis, what in AGAINST.items():
        for label, group in ((rows_text if rate_choices else "every arm", arms),
                             (f"every rule at lr {fixed}", at_fixed)):
            if group and (slopes := grad_norm_slopes(group, axis)):
                tables.append((f"Gradient norms against {what}: ends and log-log slope, {label}", *slopes))
    measured = adaptive_table(arms)
    if measured:
        tables.append(("Adaptive rule: N_eff measured at the first aggregation, and the gamma it gave", *measured))
    if len(arms[0].label) == 2 and len(arms) > 2:
        rows, cols = arms[0].label
        tables.append((f"Best-on-validation personalised test {metric}, {rows} by {cols}",
                       *pivot_table(arms, rows, cols)))
    intro = _intro(runs, every_rate, arms, common, metric, higher, rows_text)
    edges = [c for c in rate_choices if grid_edge(c)]
    if edges:
        intro += (f" {len(edges)} of the {len(rate_choices)} rates chosen on validation are at an end of the rates "
                  "their arm ran (the rates table says which): the best rate may lie beyond the grid, so widen it "
                  "before reading those rows as the protocol's answer.")
    if metric == "accuracy" and not any(str(a.label.get("method", "")).startswith("head-only") for a in arms):
        intro += (" No head-only baseline (lora.scaling=none) among these runs: what the adapters add over training"
                  " the head alone is not shown.")
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


def run_figures(run_dir: Path) -> list[Path]:
    """One run's report (into <run>/report) and its figures: what trackers log as artifacts."""
    page = build_report([run_dir], Path(run_dir) / "report")
    return sorted(page.parent.glob("*.png"))


__all__ = ["build_report", "arms_table", "pivot_table", "find_runs", "run_figures"]
