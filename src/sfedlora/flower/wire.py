"""What travels between the ServerApp and the ClientApps, and the server's check of every reply.

Adapter states travel as ArrayRecords (one array per state key). A node describes its adapters once, at
registration, as a schema {key: shape} at rank 1; the server keeps the schema most nodes agree on and
derives from it the exact keys and shapes it expects in any client's upload (A is (r, d_in), B is
(d_out, r), heads fixed), so a reply is accepted only if it is exactly what the method uploads.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from sfedlora.client.local import STAT_KEYS
from sfedlora.core.metrics import COUNTS
from sfedlora.core.state import factor_kind
from sfedlora.methods import FederatedMethod

State = dict[str, torch.Tensor]
Schema = dict[str, list[int]]


def to_record(state: State) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


def from_record(record: Any) -> State:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


def schema_of(state: State) -> Schema:
    """The shapes of a rank-r state with r replaced by 1: what every node of a run must agree on."""
    out: Schema = {}
    for k, v in state.items():
        shape = list(v.shape)
        kind = factor_kind(k)
        if kind == "A":
            shape[0] = 1
        elif kind == "B":
            shape[1] = 1
        out[k] = shape
    return out


def consensus(schemas: Sequence[str]) -> tuple[str, list[int]]:
    """The schema (as JSON) most nodes report, and the positions of the nodes that disagree."""
    agreed, _ = Counter(schemas).most_common(1)[0]
    return agreed, [i for i, s in enumerate(schemas) if s != agreed]


def template(schema: Schema, rank: int) -> State:
    """A zero state of the schema at `rank`: enough to ask the method what it uploads."""
    out: State = {}
    for k, shape in schema.items():
        shape = list(shape)
        kind = factor_kind(k)
        if kind == "A":
            shape[0] = rank
        elif kind == "B":
            shape[1] = rank
        out[k] = torch.zeros(shape)
    return out


def expected_upload(method: FederatedMethod, schema: Schema, rank: int, gamma: float, rnd: int) -> dict[str, tuple]:
    """{key: shape} of what a client of this rank uploads after round `rnd`."""
    return {k: tuple(v.shape) for k, v in method.upload(template(schema, rank), gamma, rnd).items()}


def check_upload(upload: State | None, expected: dict[str, tuple], n_examples: Any, n_registered: int,
                 stats: Any) -> str | None:
    """Why a training reply must be rejected, or None if it is acceptable.

    Checks, in order: an upload is present; its keys are exactly the expected ones; every shape matches;
    every value is finite; the example count is a positive integer equal to what the node registered
    (the weights come from registration); the training statistics parse and the loss is finite.
    """
    if upload is None:
        return "no upload in the reply"
    missing = sorted(set(expected) - set(upload))
    extra = sorted(set(upload) - set(expected))
    if missing or extra:
        parts = ([f"missing {len(missing)} keys (first {missing[0]})"] if missing else []) + (
            [f"{len(extra)} unexpected keys (first {extra[0]})"] if extra else [])
        return "wrong keys: " + ", ".join(parts)
    for k, shape in expected.items():
        if tuple(upload[k].shape) != shape:
            return f"wrong shape for {k}: {tuple(upload[k].shape)}, expected {shape}"
    for k, v in upload.items():
        if not torch.is_floating_point(v):
            return f"{k} has dtype {v.dtype}, expected floating point"
        if not bool(torch.isfinite(v).all()):
            return f"non-finite values in {k}"
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples <= 0:
        return f"missing or invalid example count ({n_examples!r})"
    if n_examples != n_registered:
        return f"example count {n_examples} differs from the {n_registered} the node registered"
    parsed = parse_stats(stats)
    if parsed is None:
        return "missing or malformed training statistics"
    if not math.isfinite(parsed["loss"]):
        return f"non-finite training loss {parsed['loss']}"
    return None


def _json(text: Any) -> Any:
    """A JSON value sent as a string by a client, or None if the text is not JSON."""
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_object(text: Any) -> dict[str, Any] | None:
    """A JSON object sent as a string by a client, or None if it is anything else."""
    value = _json(text)
    return value if isinstance(value, dict) else None


def parse_stats(text: Any) -> dict[str, Any] | None:
    """A client's training statistics (JSON with client.STAT_KEYS), or None if they are malformed."""
    stats = _json_object(text)
    if stats is None or any(f not in stats for f in STAT_KEYS):
        return None
    if not isinstance(stats["loss"], (int, float)):
        return None
    return {f: stats[f] for f in STAT_KEYS}


def parse_samples(text: Any, most: int) -> list[dict[str, str]] | None:
    """A client's generation samples (a JSON list of at most `most` {prompt, reference, completion} strings,
    each under 100,000 characters), or None if they are anything else."""
    value = _json(text)
    keys = {"prompt", "reference", "completion"}
    if not isinstance(value, list) or len(value) > most or not all(
            isinstance(v, dict) and set(v) == keys and all(isinstance(x, str) and len(x) < 100_000
                                                           for x in v.values()) for v in value):
        return None
    return value


def _confusion_ok(value: Any, n: Any) -> bool:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and len(r) == len(value) for r in value):
        return False
    cells = [x for r in value for x in r]
    return all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in cells) and sum(cells) == n


def parse_eval(text: Any, sizes: dict[str, int]) -> dict[str, dict[str, Any]] | None:
    """A client's evaluation rows {"val": row, "test": row}, or None if malformed: every row needs a finite
    loss and numeric metrics, and its counts (which weight it in the means over clients) must be
    non-negative integers, with at most `sizes[split]` examples (what the node registered)."""
    rows = _json_object(text)
    if rows is None or not all(isinstance(rows.get(s), dict) for s in ("val", "test")):
        return None
    for split in ("val", "test"):
        row = rows[split]
        if "loss" not in row or "n" not in row:
            return None
        for k, v in row.items():
            if k == "confusion":  # classification: square, non-negative integer counts of the row's n examples
                if not _confusion_ok(v, row.get("n")):
                    return None
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            if k in COUNTS and (not isinstance(v, int) or v < 0):
                return None
        if row["n"] > sizes[split]:
            return None
    return {s: rows[s] for s in ("val", "test")}


def timings(replies: dict[int, Any]) -> dict[str, float]:
    """What the replying nodes report of their time: the longest set-up, training and evaluation, and the longest
    compute of one node (their sum), in seconds."""
    ok = [r.content["metrics"] for r in replies.values() if not r.has_error() and "metrics" in r.content]

    def most(key: str) -> float:
        vals = [float(m.get(key, 0.0)) for m in ok]
        return max(vals) if vals else 0.0

    compute = max((float(m.get("setup_s", 0)) + float(m.get("train_s", 0)) + float(m.get("eval_s", 0))
                   for m in ok), default=0.0)
    return {"setup_s": most("setup_s"), "train_s": most("train_s"), "eval_s": most("eval_s"), "compute_s": compute}
