"""Local data read record by record: JSON Lines, JSON and CSV files (UTF-8, every problem named by file and
line), Parquet files (row group by row group) and `datasets.save_to_disk` folders, every text value cut to
a length the model can use before anything else holds it.

The model sees at most model.max_length tokens of a record: the start of a text or response (truncated on
the right) or the end of a prompt (truncated on the left). So of a string longer than 2 x cap characters
(cap = 64 characters per token of max_length) only its first and last cap characters can ever reach the
model; the middle is dropped as the record is read, and what the model sees is unchanged (a test encodes
cut and uncut data and compares). One huge record costs its line's bytes once, not a tokenised copy of
all of it. The number of records cut is returned and reported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sfedlora.errors import SfedloraError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
CHARS_PER_TOKEN = 64


def cut(record: dict[str, Any], cap: int) -> bool:
    """Keep the first and the last `cap` characters of every longer string value of `record`, in place;
    whether anything was cut."""
    long = [k for k, v in record.items() if isinstance(v, str) and len(v) > 2 * cap]
    for k in long:
        record[k] = record[k][:cap] + record[k][-cap:]
    return bool(long)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise SfedloraError(f"{path}:{number} is not UTF-8 text (byte {exc.start + 1} of the line); save the "
                                    "file as UTF-8") from None


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise SfedloraError(f"{path}:{number} is not a JSON record: {exc}") from None


def _json(path: Path) -> Iterator[tuple[int, Any]]:
    text = "".join(line for _, line in _lines(path))
    try:
        data = json.loads(text)
    except ValueError:  # JSON Lines with a .json name
        yield from _jsonl(path)
        return
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):  # columns
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise SfedloraError(f"{path}: its columns have different lengths {sorted(lengths)}")
        data = [dict(zip(data, row, strict=True)) for row in zip(*data.values(), strict=True)]
    if not isinstance(data, list):
        raise SfedloraError(f"{path} must hold a list of records (or one record per line), not a "
                            f"{type(data).__name__}")
    yield from enumerate(data, 1)


def _csv(path: Path) -> Iterator[tuple[int, Any]]:
    lines = (line for _, line in _lines(path))
    try:
        reader = csv.DictReader(lines)
        for row in reader:
            if None in row:
                raise SfedloraError(f"{path}:{reader.line_num} has more values than the header has columns")
            yield reader.line_num, {k: (None if v is None else v) for k, v in row.items()}
    except csv.Error as exc:
        raise SfedloraError(f"{path}: not valid CSV: {exc}") from None


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own types for files that are not Parquet
        raise SfedloraError(f"{path} is not a readable Parquet file: {exc}") from None
    n = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _saved(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    """A `datasets` save_to_disk folder: a Dataset, or a DatasetDict of which `split` is read."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for folders that are not its own
        raise SfedloraError(f"{path} is not a datasets.save_to_disk folder: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SfedloraError(f"{path} has the splits {', '.join(ds)}, not {split!r} (data.split)")
        ds = ds[split]
    yield from enumerate(ds, 1)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json"))


def read(path: Path, cap: int, split: str = "train") -> tuple[list[dict[str, Any]], int]:
    """(records, how many had text cut to `cap` characters). Each record is a mapping of field names."""
    out, n_cut, _ = read_located(path, cap, split)
    return out, n_cut


def read_located(path: Path, cap: int, split: str = "train") -> tuple[list[dict[str, Any]], int, list[str]]:
    """read(), and where each record is in the file: "line N" for JSON Lines and CSV, "record N" for the
    others (JSON, Parquet, save_to_disk folders)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if is_saved_dataset(path):
        rows: Iterator[tuple[int, Any]] = _saved(path, split)
    elif path.is_dir():
        raise SfedloraError(f"data path {path} is a folder but not a datasets.save_to_disk one")
    elif suffix not in SUFFIXES:
        raise SfedloraError(f"data file {path} must end in {', '.join(SUFFIXES)} (or be a save_to_disk folder)")
    else:
        rows = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}[suffix](path)
    out, n_cut, wheres = [], 0, []
    line_based = suffix in (".jsonl", ".csv")
    try:
        for where, record in rows:
            if not isinstance(record, dict):
                raise SfedloraError(f"{path}: record {where} is a {type(record).__name__}, not a mapping of fields")
            n_cut += cut(record, cap)
            out.append(record)
            wheres.append(f"{'line' if line_based else 'record'} {where}")
    except OSError as exc:
        raise SfedloraError(f"cannot read data file {path}: {exc.strerror}") from None
    if not out:
        raise SfedloraError(f"data file {path} holds no records")
    return out, n_cut, wheres
