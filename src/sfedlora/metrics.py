"""Run records: one JSON line per round, a summary chosen by the evaluation protocol, a console table.

Protocol (DESIGN.md): personalised metrics are each client's own adapters on its own held-out split;
means are reported uniform and sample-weighted; the best round is chosen on the validation split and
reported on the test split, next to the last round.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PRIMARY = {"classification": ("accuracy", True), "instruction": ("perplexity", False), "math": ("accuracy", True)}


def means(per_client: list[dict[str, float]], key: str, weights: list[float]) -> dict[str, float]:
    values = [row[key] for row in per_client]
    total = sum(weights)
    return {"uniform": sum(values) / len(values), "weighted": sum(v * w for v, w in zip(values, weights)) / total}


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _pick(records: list[dict[str, Any]], scope: str, metric: str, higher: bool) -> dict[str, Any] | None:
    """The evaluated round whose validation metric is best (earliest on ties), with its test numbers."""
    evaluated = [r for r in records if r.get("eval") and r["eval"].get(scope)]
    if not evaluated:
        return None

    def val(r: dict[str, Any]) -> float:
        v = r["eval"][scope]["val"][metric]
        v = v["weighted"] if isinstance(v, dict) else v
        return v if math.isfinite(v) else (-math.inf if higher else math.inf)

    best = max(evaluated, key=val) if higher else min(evaluated, key=val)
    chosen = best["eval"][scope]
    return {"round": best["round"], "val": chosen["val"][metric], "test": chosen["test"][metric]}


def summarise(records: list[dict[str, Any]], task: str) -> dict[str, Any]:
    metric, higher = PRIMARY[task]
    last = next((r for r in reversed(records) if r.get("eval")), None)
    out: dict[str, Any] = {"metric": metric, "higher_is_better": higher}
    for scope in ("personal", "global"):
        out[scope] = {
            "last": None if last is None or not last["eval"].get(scope) else {
                "round": last["round"], "val": last["eval"][scope]["val"][metric],
                "test": last["eval"][scope]["test"][metric]},
            "best": _pick(records, scope, metric, higher),
        }
    return out


COLUMNS = ("round", "train_loss", "val", "test", "global", "|gA|", "|gB|", "out_var", "up_MB", "sec")


def header(metric: str) -> str:
    names = list(COLUMNS)
    names[2], names[3], names[4] = f"val_{metric[:4]}", f"test_{metric[:4]}", f"glob_{metric[:4]}"
    return " ".join(f"{n:>10}" for n in names)


def _fmt(x: Any) -> str:
    if x is None:
        return f"{'-':>10}"
    if isinstance(x, int):
        return f"{x:>10d}"
    return f"{x:>10.4g}"


def row(record: dict[str, Any], metric: str) -> str:
    ev = record.get("eval") or {}
    pers = ev.get("personal") or {}
    glob = ev.get("global") or {}

    def mean(xs: list[float | None]) -> float | None:
        vals = [x for x in xs if x is not None]
        return sum(vals) / len(vals) if vals else None

    cells = [
        record["round"],
        mean(record["train_loss"]),
        pers.get("val", {}).get(metric, {}).get("weighted") if pers else None,
        pers.get("test", {}).get(metric, {}).get("weighted") if pers else None,
        glob.get("test", {}).get(metric) if glob else None,
        mean(record["grad_norm_A"]),
        mean(record["grad_norm_B"]),
        mean(record["adapter_out_var"]),
        record["bytes_up"] / 1e6,
        record["wall_s"],
    ]
    return " ".join(_fmt(c) for c in cells)
