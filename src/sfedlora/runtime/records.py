"""Run records: one JSON line per round, a summary chosen by the evaluation protocol, a console table.

Protocol (docs/evaluation.md): personalised metrics are each client's own adapters on its own held-out
split, averaged over clients (sfedlora.core.metrics); the best round is chosen on the validation split and
reported on the test split, next to the last round.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfedlora.core.metrics import PRIMARY
from sfedlora.data.files import CHARS_PER_TOKEN
from sfedlora.errors import SfedloraError


def round_record(rnd: int, method: str, resolved: Any, n_clients: int, stats: dict[int, dict[str, Any]],
                 ev: dict[str, Any] | None, t_train: float, t_eval: float, wall_s: float) -> dict[str, Any]:
    """The fields every round's record has, from both runners. Per-client fields hold the clients that trained
    this round, by index as a string (JSON's keys): a record grows with the round's participants, not with N (at
    10,000 clients and 10 per round, lists over every client were 99.9% null). Callers add what they know beyond
    this (participants, bytes, spectrum). Read them with client_values / client_value (records of older runs hold
    lists over all N clients)."""
    trained = sorted(stats)

    def per_client(key: str) -> dict[str, Any]:
        return {str(c): stats[c][key] for c in trained}

    return {
        "round": rnd, "method": method, "scaling": resolved.scaling, "n_clients": n_clients,
        "gamma": {str(c): resolved.gammas[c] for c in trained}, "rank": {str(c): resolved.ranks[c] for c in trained},
        "n_averaged": 0, "participants": [], "excluded": [], "trained": [], "uploaded": [],
        "train_loss": per_client("loss"), "grad_norm_A": per_client("grad_norm_A"),
        "grad_norm_B": per_client("grad_norm_B"), "grad_norm_A_steps": per_client("grad_norm_A_steps"),
        "grad_norm_B_steps": per_client("grad_norm_B_steps"), "adapter_out_mean": per_client("out_mean"),
        "adapter_out_var": per_client("out_var"), "bytes_up": 0, "bytes_down": 0,
        "train_s": t_train, "eval_s": t_eval, "wall_s": wall_s, "eval": ev,
    }


def client_values(field: Any) -> list[Any]:
    """A record's per-client field as the values of the clients that have one, in client order: a dict by client
    index (the round's trained clients) or, in records written before per-participant records, a list over all N
    clients with None for those that did not train."""
    if isinstance(field, dict):
        return [field[k] for k in sorted(field, key=int) if field[k] is not None]
    return [x for x in field or [] if x is not None]


def client_value(field: Any, c: int) -> Any:
    """Client c's value of a record's per-client field (either form, client_values), None if it has none."""
    if isinstance(field, dict):
        return field.get(str(c))
    return field[c] if field is not None and c < len(field) else None


def clients_mean(field: Any) -> float | None:
    """The mean of a record's per-client field over the clients that have a value (None if none has)."""
    vals = [float(v) for v in client_values(field)]
    return sum(vals) / len(vals) if vals else None


class JsonlWriter:
    def __init__(self, path: Path, fresh: bool = True) -> None:
        """Appends records to `path`; `fresh` empties it first."""
        self.path = path
        if fresh:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        """Append a record and make it durable before returning: a checkpoint written after it must never be of
        a round whose record a crash can still lose."""
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """`path` holding exactly `records`, replaced atomically (a temporary file, fsync, rename)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        for record in records:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A last line cut off by a crash mid-write (no newline, not JSON) is
    left out: records are whole lines written at once, so it never held a finished round."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:  # the torn tail
                break
            raise SfedloraError(f"{path}:{i + 1} is not a JSON record") from None
    return out


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


def best_round(records: list[dict[str, Any]], task: str) -> int | None:
    """The personalised best-on-validation round so far (the summary's rule: earliest on ties)."""
    metric, higher = PRIMARY[task]
    pick = _pick(records, "personal", metric, higher)
    return None if pick is None else int(pick["round"])


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


def summary(method: str, resolved: Any, cfg: Any, history: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """summary.json: the run description, the main settings, and the last and best-on-validation rounds."""
    return {"method": method, **resolved.as_record(), "rank": cfg.lora.rank, "alpha": cfg.lora.alpha,
            "clients": cfg.fed.clients, "rounds": cfg.fed.rounds, "seed": cfg.seed,
            **summarise(history, resolved.task), "partial_rounds": partial_rounds(history), "wall_s": wall_s}


def partial_rounds(history: list[dict[str, Any]]) -> list[int]:
    """Rounds where some client did not reply (Flower: a node down or too slow) or was not evaluated: their
    means are over the clients that did, which the report flags."""
    return [r["round"] for r in history
            if (r.get("flower") or {}).get("no_reply") or (r.get("eval") or {}).get("evaluated_clients")]


def _data_line(n: dict[str, int], labels: list[str], max_chars: int) -> str:
    """What reading the data did: nothing left out or cut without a word."""
    left = [f"{n[k]} {what}" for k, what in (("skipped_bad", "bad, data.on_bad_record=skip"),
                                             ("other_labels", "of labels not in data.labels"),
                                             ("over_max_examples", "over data.max_examples")) if n.get(k)]
    text = f"  data: {n['read']} records read, {n['used']} used"
    text += f" ({'; '.join(left)} left out)" if left else ""
    text += (f"; {n['cut_long']} with a text of over {2 * max_chars} characters cut to its first and last "
             f"{max_chars} (what max_length tokens can reach)") if n.get("cut_long") else ""
    if n.get("cut_to_max_length"):
        text += (f"; {n['cut_to_max_length']} of the {n['encoded']} encoded examples were longer than "
                 f"model.max_length tokens and cut to it")
    return text + (f"; labels: {', '.join(labels)}" if labels else "")


SHOWN_CLIENTS = 20  # the console describes this many clients one per line


def describe_run(method: str, resolved: Any, cfg: Any, descriptions: list[dict[str, Any]]) -> list[str]:
    """The console's opening lines: the method and what its settings resolved to, then every client's data."""
    r = resolved
    rank_text = r.ranks[0] if not r.heterogeneous else r.ranks
    gamma_text = f"{r.gamma:.4g}" if not r.heterogeneous else "[" + ", ".join(f"{g:.4g}" for g in r.gammas) + "]"
    lines = [f"{method}: scaling {r.scaling}, gamma = {gamma_text} (alpha {cfg.lora.alpha}, r {rank_text}, "
             f"N {r.n_averaged}), init {r.init}, {len(r.targets)} adapted modules, {r.task} on {cfg.data.source}, "
             f"device {r.device}, {r.precision}"
             + (f"; adaptive ({cfg.lora.adaptive}): N_eff = 1 until the first aggregation measures it per module"
                if r.scaling == "adaptive" else "")
             + ("; client states on disk (fed.client_store), a file per trained client in clients/"
                if getattr(r, "client_store", "memory") == "disk" else "")
             + (f"; server optimizer {cfg.fed.server_optimizer} (eta {r.server_lr:g})"
                if getattr(r, "server_lr", None) is not None else "")
             + (f"; FedProx mu {cfg.train.prox_mu:g} on the aggregated factors" if cfg.train.prox_mu > 0 else "")]
    if r.data_counts:
        lines.append(_data_line(r.data_counts, r.label_names, cfg.model.max_length * CHARS_PER_TOKEN))
    for p in descriptions[:SHOWN_CLIENTS]:
        hist = p["histogram"]
        if len(hist) > 6:  # e.g. 61 instruction subtasks: show the largest
            top = sorted(hist.items(), key=lambda kv: -kv[1])[:4]
            hist = f"{len(p['histogram'])} values, largest: " + ", ".join(f"{k} {v}" for k, v in top)
        lines.append(f"  client {p['client']}: train {p['train']:>5} val {p['val']:>4} test {p['test']:>4}  "
                     f"{hist or ''}")
    if len(descriptions) > SHOWN_CLIENTS:  # many clients: the rest in one line (partitions.json has them all)
        train = sorted(p["train"] for p in descriptions[SHOWN_CLIENTS:])
        lines.append(f"  ... {len(train)} more clients (partitions.json): train sizes {train[0]} to {train[-1]}, "
                     f"median {train[len(train) // 2]}")
    return lines


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

    cells = [
        record["round"],
        clients_mean(record["train_loss"]),
        pers.get("val", {}).get(metric, {}).get("weighted") if pers else None,
        pers.get("test", {}).get(metric, {}).get("weighted") if pers else None,
        glob.get("test", {}).get(metric) if glob else None,
        clients_mean(record["grad_norm_A"]),
        clients_mean(record["grad_norm_B"]),
        clients_mean(record["adapter_out_var"]),
        record["bytes_up"] / 1e6,
        record["wall_s"],
    ]
    return " ".join(_fmt(c) for c in cells)


def summary_lines(summary: dict[str, Any], out: Path) -> list[str]:
    """A finished run in a few lines (every runner's command prints these): the test metric of the last and the
    best-on-validation round, personalised and global where there is one, and where the results are."""
    lines = []
    for scope in ("personal", "global"):
        last, best = summary[scope]["last"], summary[scope]["best"]
        if last:
            value = lambda r: r["test"]["weighted"] if isinstance(r["test"], dict) else r["test"]
            lines.append(f"{scope:>8} test {summary['metric']}: last round {last['round']} = {value(last):.4f}; "
                         f"best-on-val round {best['round']} = {value(best):.4f}")
    return [*lines, f"results in {out}/ ({summary['wall_s']:.1f} s)"]
