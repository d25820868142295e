"""The client store: memory and disk keep the same clients; disk writes only clients that trained, and its
checkpoints are hard links that survive later writes."""

from __future__ import annotations

import os

import pytest
import torch

from sfedlora.client.step import Held
from sfedlora.core.adaptive import init_sq_norms
from sfedlora.core.aggregate import weighted_mean
from sfedlora.data.batching import ClientSampler
from sfedlora.errors import SfedloraError
from sfedlora.simulation.clientstore import ClientStore, Current


def sampler(c: int) -> ClientSampler:
    return ClientSampler(5, 100 + c)


def fresh(c: int) -> Held:
    return Held({"m.lora_A": torch.full((2, 3), float(c)), "m.lora_B": torch.zeros(4, 2)}, {}, sampler(c))


def trained(c: int, value: float) -> Held:
    held = fresh(c)
    held.sampler.take(3)  # its data order moved on
    return Held({"m.lora_A": torch.full((2, 3), value), "m.lora_B": torch.ones(4, 2) * value},
                {"m.lora_A": {"step": torch.tensor(1.0), "exp_avg": torch.ones(2, 3)}}, held.sampler)


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_client_reads_back_as_it_was_put_and_others_stay_fresh(tmp_path, on_disk):
    store = ClientStore(4, fresh, sampler, tmp_path if on_disk else None)
    store.put(2, trained(2, 7.0))
    got = store.get(2)
    assert torch.equal(got.adapters["m.lora_B"], torch.ones(4, 2) * 7.0)
    assert torch.equal(got.opt["m.lora_A"]["exp_avg"], torch.ones(2, 3))
    assert got.sampler.take(2) == trained(2, 7.0).sampler.take(2)  # the order continues where it stopped
    assert torch.equal(store.get(1).adapters["m.lora_A"], torch.full((2, 3), 1.0))
    if on_disk:
        assert store.took_part() == [2] and sorted(os.listdir(tmp_path / "clients")) == ["client-2.safetensors"]
    else:
        assert store.took_part() == [0, 1, 2, 3]


def test_a_disk_checkpoint_keeps_its_round_while_the_clients_train_on(tmp_path):
    store = ClientStore(3, fresh, sampler, tmp_path)
    store.put(0, trained(0, 1.0))
    snap = store.snapshot(1)
    assert snap == {"store": "checkpoints/clients-round-1", "store_clients": [0]}
    store.put(0, trained(0, 2.0))  # replaces the file: the checkpoint's link keeps round 1's
    store.put(1, trained(1, 2.0))
    store.restore(snap)
    assert store.took_part() == [0]
    assert torch.equal(store.get(0).adapters["m.lora_A"], torch.full((2, 3), 1.0))
    assert torch.equal(store.get(1).adapters["m.lora_A"], torch.full((2, 3), 1.0))  # fresh again
    (tmp_path / "checkpoints" / "clients-round-5.tmp123").mkdir()  # what a checkpoint killed midway leaves
    for rnd in (2, 3, 4):
        store.snapshot(rnd)
        store.prune()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["clients-round-3", "clients-round-4"]
    (tmp_path / "checkpoints" / "clients-round-4" / "client-0.safetensors").unlink()
    with pytest.raises(SfedloraError, match=r"lacks the files of clients \[0\]"):
        store.restore({"store": "checkpoints/clients-round-4", "store_clients": [0]})
    assert store.took_part() == [0] and store.get(0).adapters  # the store was left as it was


def test_a_memory_checkpoint_holds_the_states():
    store = ClientStore(2, fresh, sampler)
    store.put(1, trained(1, 3.0))
    snap = store.snapshot(5)
    other = ClientStore(2, fresh, sampler)
    other.restore(snap)
    assert torch.equal(other.get(1).adapters["m.lora_B"], torch.ones(4, 2) * 3.0)
    assert other.get(1).sampler.take(1) == store.get(1).sampler.take(1)


def test_streamed_means_read_one_client_at_a_time():
    """weighted_mean and init_sq_norms take any iterable; the numbers are the hand-computed ones."""
    reads = []
    view = Current(3, lambda c: reads.append(c) or fresh(c).adapters)
    mean = weighted_mean(view, [1.0, 1.0, 2.0])
    assert torch.equal(mean["m.lora_A"], torch.full((2, 3), 0.25 * 0 + 0.25 * 1 + 0.5 * 2))
    assert reads == [0, 1, 2]
    assert init_sq_norms(iter([fresh(1).adapters, fresh(2).adapters])) == {"m": (6 * 1.0 + 6 * 4.0) / 2}
    assert len(view) == 3 and view[-1]["m.lora_A"][0, 0] == 2.0
    with pytest.raises(IndexError):
        view[3]
