"""Split a task's records over clients (IID or Dirichlet, via flwr-datasets), then each client's share
into train / validation / test. Seeded: the same seed gives the same partition."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfedlora.config import DataConfig
from sfedlora.errors import SfedloraError


@dataclass
class ClientData:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]

    @property
    def n_train(self) -> int:
        return len(self.train)


def partition_indices(records: list[dict[str, Any]], n_clients: int, cfg: DataConfig, seed: int) -> list[list[int]]:
    """Indices of each client's records: what flwr-datasets' IidPartitioner (over the records shuffled with
    `seed`) or DirichletPartitioner (per-class client proportions ~ Dir(alpha)) gives for client c, for every
    client in one pass. Loading partitions one by one cost a few milliseconds of `datasets` bookkeeping each
    (shard, select, fingerprint): 54 s at 10,000 clients. Checked equal to load_partition in tests/unit."""
    if n_clients > len(records):
        raise SfedloraError(f"{n_clients} clients but only {len(records)} examples")
    if cfg.partition == "by_field":
        return by_field(records, n_clients, cfg.partition_by)
    if cfg.partition == "iid":
        return iid_shards(len(records), n_clients, seed)
    if cfg.partition_by not in records[0]:
        raise SfedloraError(
            f"a Dirichlet split needs the field data.partition_by={cfg.partition_by!r}; records have "
            f"{sorted(records[0])}"
        )
    if cfg.min_partition_size * n_clients > len(records):
        raise SfedloraError(
            f"a Dirichlet split cannot give each of {n_clients} clients {cfg.min_partition_size} examples "
            f"out of {len(records)}; lower data.min_partition_size or raise data.max_examples"
        )
    try:
        return dirichlet(records, n_clients, cfg, seed)
    except ValueError as exc:
        raise SfedloraError(
            f"Dirichlet split (alpha={cfg.dirichlet_alpha}, min size {cfg.min_partition_size}) failed for "
            f"{n_clients} clients: {exc} Raise data.dirichlet_alpha or lower data.min_partition_size."
        ) from None


def iid_shards(n_records: int, n_clients: int, seed: int) -> list[list[int]]:
    """IidPartitioner over a `datasets.Dataset.shuffle(seed=seed)`, computed directly: the shuffle is numpy's
    default_rng(seed).permutation, and the partitioner's `Dataset.shard(contiguous=True)` cuts the shuffled order
    into contiguous shards, the first n_records % n_clients one longer."""
    order = np.random.default_rng(seed).permutation(n_records).tolist()
    div, mod = divmod(n_records, n_clients)
    starts = [div * c + min(c, mod) for c in range(n_clients + 1)]
    return [order[starts[c]:starts[c + 1]] for c in range(n_clients)]


def dirichlet(records: list[dict[str, Any]], n_clients: int, cfg: DataConfig, seed: int) -> list[list[int]]:
    """DirichletPartitioner's index lists, drawn once for every partition (row i is record i)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=n_clients, partition_by="key", alpha=cfg.dirichlet_alpha,
        min_partition_size=cfg.min_partition_size, self_balancing=False, shuffle=True, seed=seed,
    )
    partitioner.dataset = Dataset.from_list([{"idx": i, "key": str(r.get(cfg.partition_by, ""))}
                                             for i, r in enumerate(records)])
    _ = partitioner.num_partitions  # draws every partition's rows (and checks the count)
    rows = getattr(partitioner, "_partition_id_to_indices", None)
    if rows is None:  # another flwr-datasets: its public path, one partition at a time
        return [list(partitioner.load_partition(c)["idx"]) for c in range(n_clients)]
    return [[int(i) for i in rows[c]] for c in range(n_clients)]


def by_field(records: list[dict[str, Any]], n_clients: int, key: str) -> list[list[int]]:
    """Natural clients: every record of one value of `key` (a user or author id) goes to one client; values,
    largest first (ties by value), each to the client with the fewest records so far (ties: the lowest)."""
    missing = [i + 1 for i, r in enumerate(records) if r.get(key) is None]
    if missing:
        raise SfedloraError(f"data.partition=by_field over {key!r}: {len(missing)} records have no {key!r} (records "
                            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''})")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r[key]), []).append(i)
    if n_clients > len(groups):
        raise SfedloraError(f"data.partition=by_field over {key!r}: {len(groups)} distinct values for {n_clients} "
                            "clients (fed.clients): lower fed.clients")
    bins: list[list[int]] = [[] for _ in range(n_clients)]
    for _, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(bins, key=len).extend(idx)  # min returns the first of equal bins: the lowest client
    return bins


def split_client(rows: list[dict[str, Any]], val_fraction: float, test_fraction: float, seed: int) -> ClientData:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = len(rows)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise SfedloraError(f"a client with {n} examples cannot be split into train/val/test")
    return ClientData(train=rows[n_val + n_test:], val=rows[:n_val], test=rows[n_val:n_val + n_test])


def make_clients(records: list[dict[str, Any]], n_clients: int, cfg: DataConfig, seed: int) -> list[ClientData]:
    parts = partition_indices(records, n_clients, cfg, seed)
    return [split_client([records[i] for i in idx], cfg.val_fraction, cfg.test_fraction, seed * 1009 + c)
            for c, idx in enumerate(parts)]


def describe(clients: list[ClientData], key: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-client sizes and a histogram of `key` (label or category) over all of that client's records."""
    out = []
    for c, d in enumerate(clients):
        hist = Counter(str(r[key]) for r in d.train + d.val + d.test if key in r)  # none for plain LM data
        if names:
            hist = Counter({names[int(k)]: v for k, v in hist.items() if k.isdigit()})
        out.append({"client": c, "train": len(d.train), "val": len(d.val), "test": len(d.test),
                    "histogram": dict(sorted(hist.items()))})
    return out
