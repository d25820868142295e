"""Aggregation rules on hand-made tensors: what each method changes and what it must never change."""

import pytest
import torch

from sfedlora.core.aggregate import client_weights, weighted_mean
from sfedlora.methods import METHODS, get_method

A, B = "layer.lora_A", "layer.lora_B"


def client(a: float, b: float) -> dict[str, torch.Tensor]:
    return {A: torch.full((2, 3), a), B: torch.full((3, 2), b), "classifier.weight": torch.full((2, 2), a + b)}


def one_round(method_name: str, clients, weights, rnd: int = 1):
    m = get_method(method_name)
    uploads = [m.upload(c, 1.0, rnd) for c in clients]
    update = m.aggregate(uploads, weights, rnd)
    return [m.download(c, update, 1.0) for c in clients], uploads


def test_weights():
    assert client_weights([10, 30], "samples") == [0.25, 0.75]
    assert client_weights([10, 30], "uniform") == [0.5, 0.5]


def test_fedit_is_hand_weighted_average():
    clients = [client(1.0, 10.0), client(3.0, 20.0), client(5.0, 60.0)]
    after, _ = one_round("fedit", clients, client_weights([1, 1, 2], "samples"))
    # A: 0.25*1 + 0.25*3 + 0.5*5 = 3.5 ; B: 0.25*10 + 0.25*20 + 0.5*60 = 37.5
    for c in after:
        assert torch.allclose(c[A], torch.full((2, 3), 3.5))
        assert torch.allclose(c[B], torch.full((3, 2), 37.5))
        # head: 0.25*11 + 0.25*23 + 0.5*65 = 41
        assert torch.allclose(c["classifier.weight"], torch.full((2, 2), 41.0))


@pytest.mark.parametrize("name", ["fedsa-lora", "fedsa-rslora", "sfed-lora"])
def test_fedsa_family_keeps_each_clients_b(name):
    clients = [client(1.0, 10.0), client(3.0, 20.0), client(5.0, 60.0)]
    before_b = [c[B].clone() for c in clients]
    after, uploads = one_round(name, clients, [0.2, 0.3, 0.5])
    assert all(B not in u for u in uploads), "a B left its client"
    for c, b in zip(after, before_b, strict=True):
        assert torch.equal(c[B], b)  # unchanged, and its own (the three values differ)
    assert {float(c[B][0, 0]) for c in after} == {10.0, 20.0, 60.0}
    for c in after:  # A averaged: 0.2*1 + 0.3*3 + 0.5*5 = 3.6
        assert torch.allclose(c[A], torch.full((2, 3), 3.6))


def test_ffa_never_changes_a():
    shared = torch.randn(2, 3)
    clients = [{A: shared.clone(), B: torch.full((3, 2), float(i))} for i in range(3)]
    m = get_method("ffa-lora")
    assert "A" not in m.trained(1) and "A" not in m.uploaded(1)
    after, _ = one_round("ffa-lora", clients, [1, 1, 1])
    for c in after:
        assert torch.equal(c[A], shared)
        assert torch.allclose(c[B], torch.full((3, 2), 1.0))


def test_rolora_alternates():
    m = get_method("rolora")
    assert [sorted(m.trained(t) - {"head"}) for t in (1, 2, 3, 4)] == [["B"], ["A"], ["B"], ["A"]]
    clients = [client(1.0, 10.0), client(3.0, 30.0)]
    after1, _ = one_round("rolora", clients, [1, 1], rnd=1)
    assert all(torch.allclose(c[B], torch.full((3, 2), 20.0)) for c in after1)
    assert [float(c[A][0, 0]) for c in after1] == [1.0, 3.0]  # A untouched in a B round
    after2, _ = one_round("rolora", clients, [1, 1], rnd=2)
    assert all(torch.allclose(c[A], torch.full((2, 3), 2.0)) for c in after2)
    assert [float(c[B][0, 0]) for c in after2] == [10.0, 30.0]


def test_every_method_has_a_citation():
    assert set(METHODS) == {"fedit", "ffa-lora", "fedsa-lora", "fedsa-rslora", "sfed-lora", "rolora", "hetlora",
                            "raflora", "flora", "flexlora"}
    for cls in METHODS.values():
        assert cls.citation and cls.__doc__


def test_weighted_mean_rejects_mismatched_keys():
    with pytest.raises(ValueError):
        weighted_mean([{A: torch.zeros(1)}, {B: torch.zeros(1)}], [1, 1])
