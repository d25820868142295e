"""Dirichlet and IID partitions: seeded determinism, minimum sizes, clear failure."""

import pytest

from sfedlora.config import DataConfig
from sfedlora.data.partition import make_clients, partition_indices, split_client
from sfedlora.errors import SfedloraError

RECORDS = [{"text": f"t{i}", "label": i % 4} for i in range(400)]


def test_dirichlet_is_deterministic_and_respects_min_size():
    cfg = DataConfig(partition="dirichlet", dirichlet_alpha=0.3, min_partition_size=30)
    first = partition_indices(RECORDS, 5, cfg, seed=3)
    again = partition_indices(RECORDS, 5, cfg, seed=3)
    other = partition_indices(RECORDS, 5, cfg, seed=4)
    assert first == again
    assert first != other
    assert all(len(p) >= 30 for p in first)
    flat = sorted(i for p in first for i in p)
    assert flat == list(range(400))  # a partition: every record exactly once


def test_iid_sizes_are_even():
    parts = partition_indices(RECORDS, 3, DataConfig(partition="iid"), seed=0)
    assert sorted(len(p) for p in parts) == [133, 133, 134]


@pytest.mark.parametrize("cfg", [DataConfig(partition="iid"),
                                 DataConfig(partition="dirichlet", dirichlet_alpha=0.5, min_partition_size=20)])
def test_one_pass_equals_flower_partitions_loaded_one_by_one(cfg):
    """All clients' indices in one pass (data.partition.partition_indices) are what flwr-datasets'
    load_partition gives client by client, uneven IID shards (400 over 7: 58 x 1, 57 x 6) included."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    ds = Dataset.from_list([{"idx": i, "key": str(r["label"])} for i, r in enumerate(RECORDS)])
    if cfg.partition == "iid":
        partitioner = IidPartitioner(num_partitions=7)
        ds = ds.shuffle(seed=11)
    else:
        partitioner = DirichletPartitioner(num_partitions=7, partition_by="key", alpha=0.5, min_partition_size=20,
                                           self_balancing=False, shuffle=True, seed=11)
    partitioner.dataset = ds
    one_by_one = [list(partitioner.load_partition(c)["idx"]) for c in range(7)]
    assert partition_indices(RECORDS, 7, cfg, seed=11) == one_by_one
    if cfg.partition == "iid":
        assert [len(p) for p in one_by_one] == [58, 57, 57, 57, 57, 57, 57]


def test_impossible_min_size_is_a_clear_error():
    cfg = DataConfig(partition="dirichlet", min_partition_size=150)
    with pytest.raises(SfedloraError, match="cannot give each of 4 clients 150 examples"):
        partition_indices(RECORDS, 4, cfg, seed=0)


def test_unlucky_dirichlet_is_a_clear_error():
    cfg = DataConfig(partition="dirichlet", dirichlet_alpha=0.01, min_partition_size=95)
    with pytest.raises(SfedloraError, match="Dirichlet split"):
        partition_indices(RECORDS, 4, cfg, seed=0)


def test_train_val_test_split():
    d = split_client(RECORDS[:100], 0.1, 0.2, seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (70, 10, 20)
    assert not {r["text"] for r in d.train} & {r["text"] for r in d.test}
    clients = make_clients(RECORDS, 4, DataConfig(partition="iid"), seed=0)
    assert sum(c.n_train + len(c.val) + len(c.test) for c in clients) == 400
