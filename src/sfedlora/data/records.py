"""Record checks: every record a task uses has what the task needs, or the run stops naming the rows.

A standard record (data.sources) needs, per task, its text fields as strings (a response non-empty: it is
what the loss is on) and, for classification, a label that is a string or an integer. Caught here rather
than trained on:
  - a missing or null field, a text that is not a string, an empty response;
  - a label with surrounding whitespace (`"pos "` would be a class of its own);
  - labels of mixed types (`1` and `"1"`): a file mixing them is ambiguous, whichever way it is read.
With data.on_bad_record: skip, bad records are left out and counted instead (mixed label types still stop
the run: no single record is the bad one).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sfedlora.errors import SfedloraError

TEXT = {"classification": ("text",), "instruction": ("prompt", "response"), "math": ("prompt", "response")}
SHOWN = 5


def problem(record: dict[str, Any], task: str, pair: bool) -> str | None:
    """What is wrong with one standard record (fields as in data.sources), or None."""
    needed = [*TEXT[task], *(["text_pair"] if pair else []), *(["label"] if task == "classification" else []),
              *(["answer"] if task == "math" else [])]
    for name in needed:
        if record.get(name) is None:
            return f"no {name}"
    for name in [*TEXT[task], *(["text_pair"] if pair else [])]:
        value = record[name]
        if not isinstance(value, str):
            return f"{name} is a {type(value).__name__}, not text"
        if name == "response" and not value.strip():
            return "empty response"
    if "input" in record and record["input"] is not None and not isinstance(record["input"], str):
        return f"input is a {type(record['input']).__name__}, not text"
    if task == "classification":
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            return f"label {label!r} is a {type(label).__name__}; labels are text or integers"
        if isinstance(label, str) and (label != label.strip() or not label):
            return f"label {label!r} has surrounding whitespace" if label.strip() else "empty label"
    if task == "math" and not isinstance(record["answer"], (str, int, float)):
        return f"answer is a {type(record['answer']).__name__}"
    return None


def check(rows: list[dict[str, Any]], task: str, source: str, pair: bool = False,
          on_bad: str = "error") -> tuple[list[dict[str, Any]], int]:
    """(the good records, how many were skipped). Rows are named by their position in the source (1-based)."""
    bad: dict[str, list[int]] = defaultdict(list)
    good = []
    for i, record in enumerate(rows, 1):
        why = problem(record, task, pair)
        if why is None:
            good.append(record)
        else:
            bad[why].append(i)
    n_bad = sum(len(v) for v in bad.values())
    if n_bad and on_bad != "skip":
        shown = "; ".join(f"{why} (record{'s' if len(at) > 1 else ''} {', '.join(map(str, at[:SHOWN]))}"
                          f"{f' and {len(at) - SHOWN} more' if len(at) > SHOWN else ''})"
                          for why, at in list(bad.items())[:SHOWN])
        raise SfedloraError(f"{n_bad} of {len(rows)} records of {source!r} cannot be used: {shown}. Fix them, or set "
                            "data.on_bad_record=skip to leave them out (the count is reported)")
    if task == "classification":
        kinds: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(good, 1):
            kinds[type(record["label"]).__name__].append(i)
        if len(kinds) > 1:
            shown = "; ".join(f"{kind} labels in records {', '.join(map(str, at[:3]))}" for kind, at in kinds.items())
            raise SfedloraError(f"{source!r} mixes label types ({shown}): 1 and \"1\" would be read as one class or "
                                "two depending on the reader; make every label text or every label an integer")
    if not good:
        raise SfedloraError(f"none of the {len(rows)} records of {source!r} can be used")
    return good, n_bad
