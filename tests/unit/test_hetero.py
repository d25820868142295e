"""Heterogeneous ranks by hand: rank-partitioned and zero-padded averaging, FLoRA stacking, FlexLoRA's SVD,
padding that stays zero, partial updates, the partition N, spectra."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from test_batched_equals_peft import lm_batches, run_sfedlora

from sfedlora.adapters.inject import init_adapter_state, inject_adapters
from sfedlora.config import TrainConfig
from sfedlora.core.aggregate import partition_n, partition_weights
from sfedlora.core.spectrum import spectrum_stats
from sfedlora.core.state import overlay, pad_state, truncate_state
from sfedlora.methods import get_method

A, B = "m.lora_A", "m.lora_B"


def client(rank: int, value: float, d: int = 3) -> dict[str, torch.Tensor]:
    return {A: torch.full((rank, d), value), B: torch.full((d, rank), 10 * value)}


def test_partition_weights_hand_computed():
    got = partition_weights([2, 4, 8], [0.5, 0.3, 0.2])
    assert [p for p, _ in got] == [(0, 2), (2, 4), (4, 8)]
    assert got[0][1] == pytest.approx([0.5, 0.3, 0.2])
    assert got[1][1] == pytest.approx([0.0, 0.6, 0.4])  # 0.3 / 0.5, 0.2 / 0.5
    assert got[2][1] == pytest.approx([0.0, 0.0, 1.0])


def test_raflora_and_hetlora_on_ranks_2_4_8():
    clients = [client(2, 1.0), client(4, 2.0), client(8, 4.0)]
    w = [0.5, 0.3, 0.2]
    ra = get_method("raflora").aggregate(clients, w, 1)[A][:, 0]
    # rows 0-1: .5*1 + .3*2 + .2*4 = 1.9 ; rows 2-3: .6*2 + .4*4 = 2.8 ; rows 4-7: 4
    assert ra.tolist() == pytest.approx([1.9, 1.9, 2.8, 2.8, 4, 4, 4, 4])
    het = get_method("hetlora").aggregate(clients, w, 1)[A][:, 0]
    # zero-padding shrinks the higher partitions: rows 2-3: .3*2 + .2*4 = 1.4 ; rows 4-7: .2*4 = 0.8
    assert het.tolist() == pytest.approx([1.9, 1.9, 1.4, 1.4, 0.8, 0.8, 0.8, 0.8])
    m = get_method("raflora")
    after = [m.download(c, m.aggregate(clients, w, 1), 1.0) for c in clients]
    assert [tuple(c[A].shape) for c in after] == [(2, 3), (4, 3), (8, 3)]
    assert [tuple(c[B].shape) for c in after] == [(3, 2), (3, 4), (3, 8)]


@pytest.mark.parametrize("name", ["raflora", "hetlora"])
def test_equal_ranks_equal_fedit(name):
    g = torch.Generator().manual_seed(0)
    clients = [{A: torch.randn(4, 5, generator=g), B: torch.randn(6, 4, generator=g),
                "classifier.weight": torch.randn(2, 2, generator=g)} for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    ours = get_method(name).aggregate(clients, w, 1)
    fedit = get_method("fedit").aggregate(clients, w, 1)
    for k in fedit:
        assert torch.equal(ours[k], fedit[k])


def test_flora_stack_is_the_sum_of_weighted_products():
    g = torch.Generator().manual_seed(1)
    ranks, gammas, w = [2, 4, 8], [4.0, 2.0, 1.0], [0.5, 0.3, 0.2]
    clients = [{A: torch.randn(r, 5, generator=g, dtype=torch.float64),
                B: torch.randn(6, r, generator=g, dtype=torch.float64)} for r in ranks]
    m = get_method("flora")
    uploads = [m.upload(c, gm, 1) for c, gm in zip(clients, gammas, strict=True)]
    update = m.aggregate(uploads, w, 1)
    assert update["m.stack_A"].shape == (14, 5) and update["m.stack_B"].shape == (6, 14)  # rank 2 + 4 + 8
    delta = m.merged(update)["m"]
    expected = sum(wi * gm * c[B] @ c[A] for wi, gm, c in zip(w, gammas, clients, strict=True))
    torch.testing.assert_close(delta, expected, rtol=1e-12, atol=1e-12)


def test_flexlora_gives_each_client_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(2)
    ranks, gammas, w = [1, 2, 4], [8.0, 4.0, 2.0], [0.2, 0.3, 0.5]
    clients = [{A: torch.randn(r, 6, generator=g), B: torch.randn(5, r, generator=g)} for r in ranks]
    m = get_method("flexlora")
    update = m.aggregate([m.upload(c, gm, 1) for c, gm in zip(clients, gammas, strict=True)], w, 1)
    dw = sum(wi * gm * (c[B].double() @ c[A].double()) for wi, gm, c in zip(w, gammas, clients, strict=True))
    u, s, vh = torch.linalg.svd(dw)
    for c, r, gm in zip(clients, ranks, gammas, strict=True):
        new = m.download(c, update, gm)
        assert new[A].shape == (r, 6) and new[B].shape == (5, r)
        approx = gm * new[B].double() @ new[A].double()
        torch.testing.assert_close(approx, (u[:, :r] * s[:r]) @ vh[:r], rtol=1e-4, atol=1e-5)
        # Eckart-Young: the error is the energy of the dropped singular values
        assert float(torch.linalg.norm(dw - approx)) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-4)


def test_padded_entries_stay_zero_and_padding_changes_nothing():
    """Clients of ranks 2, 4, 6 trained together (padded to 6, AdamW with weight decay) keep exact zeros
    in the padding, and each equals the same client trained alone at its own rank."""
    ranks = [2, 4, 6]
    probe = tiny_llama()
    inject_adapters(probe, "qv")
    states = [truncate_state(init_adapter_state(probe, 6, torch.Generator().manual_seed(c)), r)
              for c, r in enumerate(ranks)]
    cfg = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1)
    batches = lm_batches(seed=5)
    together, _ = run_sfedlora(tiny_llama(), batches, [pad_state(s, 6) for s in states], 2.0, cfg, "instruction")
    for c, r in enumerate(ranks):
        for k, v in together[c].items():
            if k.endswith("lora_A"):
                assert torch.count_nonzero(v[r:]) == 0
            if k.endswith("lora_B"):
                assert torch.count_nonzero(v[:, r:]) == 0
        alone, _ = run_sfedlora(tiny_llama(), [batches[c]], [states[c]], 2.0, cfg, "instruction")
        for k, v in truncate_state(together[c], r).items():
            # Adam divides by sqrt(v): float32 noise in near-zero gradients moves an entry by up to
            # ~lr * 1e-2, so the bound is 1% of one step (lr = 0.01), not bit equality
            torch.testing.assert_close(v, alone[0][k], rtol=1e-4, atol=1e-4)


def test_spectrum_stats():
    delta = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    stats = spectrum_stats(delta, r_min=1)
    assert stats["energy_beyond_rmin"] == pytest.approx(5 / 14)  # (4 + 1) / (9 + 4 + 1)
    assert 1 < stats["effective_rank"] < 3


def test_overlay_and_download_keep_the_rows_an_update_lacks():
    """Under partial participation a round's update only reaches the participants' largest rank: a client
    of rank 8 that receives a rank-4 update takes its 4 rows (A) / columns (B) and keeps its own others."""
    old = {A: torch.arange(8.0).view(8, 1).repeat(1, 3), B: torch.ones(3, 8), "head.bias": torch.zeros(2)}
    new = {A: torch.full((4, 3), -1.0), B: torch.full((3, 4), 5.0), "head.bias": torch.ones(2)}
    out = overlay(old, new)
    assert out[A][:, 0].tolist() == [-1, -1, -1, -1, 4, 5, 6, 7] and out[B][0].tolist() == [5] * 4 + [1] * 4
    assert out["head.bias"].tolist() == [1, 1] and old[A][0, 0] == 0  # old itself is untouched
    assert overlay(new, old)[A][:, 0].tolist() == list(range(8))  # a wider update replaces all rows
    for name in ("raflora", "hetlora", "sfed-lora"):
        got = get_method(name).download(old, {A: new[A], "head.bias": new["head.bias"]}, 1.0)
        assert got[A][:, 0].tolist() == [-1, -1, -1, -1, 4, 5, 6, 7] and torch.equal(got[B], old[B])
        small = {A: old[A][:2], B: old[B][:, :2], "head.bias": old["head.bias"]}
        assert get_method(name).download(small, new, 1.0)[A].shape == (2, 3)  # cut to its own rank


def test_partition_n_by_hand():
    assert partition_n([2, 4, 8], 3) == pytest.approx([3.0, 2.4, 8 / (2 / 3 + 2 / 2 + 4 / 1)])
    assert partition_n([4, 4, 4], 3) == [3.0, 3.0, 3.0]  # equal ranks: the participants, as the paper's N
    assert partition_n([4, 4, 4, 4], 2) == [2.0, 2.0, 2.0, 2.0]  # 2 of 4 per round
    assert partition_n([2, 4, 8], 1) == [1.0, 1.0, 1.0]  # one client per round: nothing is averaged
