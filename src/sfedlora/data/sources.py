"""Data sources -> a list of standard records for one task type.

Task types and their record fields:
  classification   text, [text_pair], label (int)          metric: accuracy
  instruction      prompt, [input], response, [category]    metric: perplexity on response tokens
  math             prompt, [input], response (worked), answer   metrics: perplexity, greedy-decoding accuracy

Sources: the built-in sets (data.builtin: `bbc-news`, `syllogism`, `reasoning-instructions`, `gsm-symbolic`,
read from pinned packages, never downloaded); a local .json / .jsonl / .csv file; any Hugging Face dataset
name (`hf:` prefix optional), with the field names given in the config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfedlora.config import DataConfig
from sfedlora.data import builtin, files, records
from sfedlora.data.builtin import BUILTIN
from sfedlora.errors import SfedloraError

TASK_FIELDS = {
    "classification": ("text", "label"),
    "instruction": ("prompt", "response"),
    "math": ("prompt", "response", "answer"),
}


@dataclass
class TaskData:
    task: str
    records: list[dict[str, Any]]
    label_names: list[str] = field(default_factory=list)
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # read, skipped_bad, cut_long, other_labels, used


def _hub(name: str, subset: str | None, split: str) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:
        raise SfedloraError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {exc}") from None
    return list(ds)


def _rename(rows: list[dict[str, Any]], cfg: DataConfig, task: str, source: str) -> list[dict[str, Any]]:
    mapping = {"text": cfg.text_field, "text_pair": cfg.text_pair_field, "label": cfg.label_field,
               "prompt": cfg.prompt_field, "input": cfg.input_field, "response": cfg.response_field,
               "answer": cfg.answer_field, "category": cfg.category_field}
    present = set(rows[0]) if rows else set()
    for std in TASK_FIELDS[task]:
        if mapping[std] not in present:
            raise SfedloraError(
                f"dataset {source!r} has no field {mapping[std]!r} needed as {std!r} for a {task} task "
                f"(its fields: {', '.join(sorted(present)) or 'none'}); set data.{std}_field"
            )
    if task == "classification" and cfg.text_pair_field and cfg.text_pair_field not in present:
        raise SfedloraError(f"dataset {source!r} has no field {cfg.text_pair_field!r} (data.text_pair_field)")
    keep = cfg.partition_by if cfg.partition_by and cfg.partition_by not in mapping.values() else None
    out = []
    for row in rows:
        rec = {std: row[src] for std, src in mapping.items() if src and src in row}
        if keep and keep in row:  # the field a split is over (a user or author id) travels with the record
            rec[keep] = row[keep]
        out.append(rec)
    return out


def load_task(cfg: DataConfig, seed: int, max_chars: int = 1 << 20) -> TaskData:
    """Load, standardise, check (data.records), filter labels and subsample (seeded) to cfg.max_examples
    records; text values are cut to `max_chars` characters (data.files). `counts` says what happened."""
    source = cfg.source
    n_cut: int | None = None  # files are cut as they are read; other sources below
    wheres: list[str] = []  # where each record is in a file (files.read)
    if source in BUILTIN:
        task = BUILTIN[source].task
        if cfg.task and cfg.task != task:
            raise SfedloraError(f"data.source {source} is a {task} task, not {cfg.task}")
        rows = builtin.load(source, cfg.max_examples or 2000, seed)
    else:
        if not cfg.task:
            raise SfedloraError(f"data.task must be set for source {source!r}: classification, instruction or math")
        task = cfg.task
        path = Path(source)
        if path.suffix.lower() in files.SUFFIXES or path.exists():
            if not path.exists():
                raise SfedloraError(f"data file {path} does not exist")
            rows, n_cut, wheres = files.read_located(path, max_chars, cfg.split)  # cut as read
        else:
            rows = _hub(source.removeprefix("hf:"), cfg.subset, cfg.split)
        rows = _rename(rows, cfg, task, source)
    if not rows:
        raise SfedloraError(f"dataset {source!r} is empty")
    if cfg.partition == "by_field":  # named where they are in the source, before records are drawn and shuffled
        missing = [wheres[i] if wheres else f"record {i + 1}" for i, r in enumerate(rows)
                   if r.get(cfg.partition_by) is None]
        if missing:
            raise SfedloraError(f"data.partition=by_field over {cfg.partition_by!r}: {len(missing)} records of "
                                f"{source!r} have no {cfg.partition_by!r} ({', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''})")
    n_read = len(rows)
    if n_cut is None:
        n_cut = sum(files.cut(r, max_chars) for r in rows)
    # the built-in sets are as published: any bad record of theirs is left out and counted; a user's data stops
    # at the first bad record unless data.on_bad_record=skip
    on_bad = "skip" if source in BUILTIN else cfg.on_bad_record
    rows, n_bad = records.check(rows, task, source, pair=bool(cfg.text_pair_field), on_bad=on_bad)
    label_names: list[str] = []
    n_checked = len(rows)
    if task == "classification":
        rows, label_names = _encode_labels(rows, cfg.labels, source)
    n_kept = len(rows)
    rng = random.Random(seed)
    rng.shuffle(rows)
    if cfg.max_examples:
        rows = rows[: cfg.max_examples]
    counts = {"read": n_read, "skipped_bad": n_bad, "cut_long": n_cut, "other_labels": n_checked - n_kept,
              "over_max_examples": n_kept - len(rows), "used": len(rows)}
    return TaskData(task=task, records=rows, label_names=label_names, source=source, counts=counts)


def _encode_labels(rows: list[dict[str, Any]], keep: list[str] | None,
                   source: str) -> tuple[list[dict[str, Any]], list[str]]:
    present = sorted({str(r["label"]) for r in rows})
    names = [str(x) for x in keep] if keep else present
    missing = [n for n in names if n not in present]
    if missing:
        raise SfedloraError(f"data.labels {missing} do not occur in {source!r}; its labels: {present}")
    index = {n: i for i, n in enumerate(names)}
    out = [{**r, "label": index[str(r["label"])]} for r in rows if str(r["label"]) in index]
    if len(names) < 2:
        raise SfedloraError(f"classification needs at least 2 labels; the {len(out)} record(s) of {source!r} have "
                            f"only {names}")
    return out, names
