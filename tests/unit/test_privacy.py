"""Server-side DP (core.privacy): clipping and noise by hand, the same clipping as Flower's own function, the
Server's round with DP (reference, record, seeded noise), and what it is refused for."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sfedlora.config import load_config
from sfedlora.core.privacy import add_noise, clip_upload, noise_std, sensitivity_clients
from sfedlora.errors import SfedloraError
from sfedlora.methods import get_method
from sfedlora.runtime.protocol import Exchange, Server
from sfedlora.runtime.resolve import check, resolve


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_clipping_by_hand():
    # change (3, 4) over two tensors: norm 5; C = 1 -> (0.6, 0.8) added back to the reference (1, 1)
    clipped, norm = clip_upload({"a": t(4.0), "b": t(5.0)}, {"a": t(1.0), "b": t(1.0)}, 1.0)
    assert norm == pytest.approx(5.0)
    assert clipped["a"].tolist() == pytest.approx([1.6]) and clipped["b"].tolist() == pytest.approx([1.8])
    same, norm = clip_upload({"a": t(1.5)}, {"a": t(1.0)}, 1.0)  # within C: unchanged
    assert norm == pytest.approx(0.5) and same["a"].tolist() == [1.5]


def test_clipping_equals_flowers_own_function():
    flwr_dp = pytest.importorskip("flwr.supercore.differential_privacy")
    g = torch.Generator().manual_seed(0)
    upload = {"x.lora_A": torch.randn(4, 6, generator=g), "head.w": torch.randn(3, generator=g)}
    ref = {"x.lora_A": torch.randn(4, 6, generator=g), "head.w": torch.randn(3, generator=g)}
    ours, _ = clip_upload(upload, ref, 0.7)
    theirs = [upload[k].numpy().copy() for k in upload]
    flwr_dp.compute_clip_model_update(theirs, [ref[k].numpy() for k in upload], 0.7)
    for k, v in zip(upload, theirs, strict=True):
        np.testing.assert_allclose(ours[k].numpy(), v, rtol=1e-5, atol=1e-6)
    assert flwr_dp.compute_stdv(0.5, 0.7, 4) == noise_std(0.5, 0.7, 4)


def test_noise_is_seeded_and_its_norm_is_what_was_added():
    mean = {"a": torch.zeros(1000), "b": torch.ones(10)}
    x, norm = add_noise(mean, 0.1, torch.Generator().manual_seed(3))
    y, _ = add_noise(mean, 0.1, torch.Generator().manual_seed(3))
    assert all(torch.equal(x[k], y[k]) for k in x)
    added = torch.cat([(x[k] - mean[k]).flatten() for k in sorted(x)])
    assert float(added.norm()) == pytest.approx(norm, rel=1e-5)
    assert float(added.std()) == pytest.approx(0.1, rel=0.1)


def _server(*over: str, sizes: tuple[int, int] = (10, 10)) -> Server:
    cfg = load_config(None, ["fed.method=fedsa-lora", "fed.clients=2", "lora.rank=2", "lora.init=shared", *over])
    m = get_method(cfg.fed.method)
    return Server(cfg, m, replace(resolve(cfg, m, list(sizes)), sizes=[{"train": n, "val": 2, "test": 2}
                                                                       for n in sizes]))


def test_a_dp_round_clips_against_the_initial_upload_then_the_previous_aggregate():
    server = _server("fed.dp_clipping_norm=1.0", "fed.dp_noise_multiplier=0.0")
    assert server.resolved.dp == {"clipping_norm": 1.0, "noise_multiplier": 0.0}
    server.initial = {"m.lora_A": t(0.0, 0.0)}
    ups = {0: {"m.lora_A": t(3.0, 4.0)}, 1: {"m.lora_A": t(0.3, 0.4)}}  # change norms 5 (clipped to 1) and 0.5
    first = server.aggregate(1, Exchange(selected=[0, 1], uploads=ups))
    assert first["m.lora_A"].tolist() == pytest.approx([0.45, 0.6])  # mean of (0.6, 0.8) and (0.3, 0.4)
    rec = server.dp_round
    assert rec["clipped"] == [0] and rec["update_norm"] == pytest.approx([5.0, 0.5]) and rec["noise_norm"] == 0.0
    ups = {0: {"m.lora_A": t(0.45, 2.6)}, 1: {"m.lora_A": t(0.45, 0.6)}}  # against (0.45, 0.6): change 2 and 0
    second = server.aggregate(2, Exchange(selected=[0, 1], uploads=ups))
    assert second["m.lora_A"].tolist() == pytest.approx([0.45, 0.6 + 0.5])
    assert server.dp_round["update_norm"] == pytest.approx([2.0, 0.0], abs=1e-6)


def _noised(rnd: int, *over: str) -> tuple[torch.Tensor, Server]:
    server = _server("fed.dp_clipping_norm=1.0", "fed.dp_noise_multiplier=2.0", *over)
    server.initial = {"m.lora_A": t(0.0, 0.0)}
    ups = {0: {"m.lora_A": t(0.1, 0.1)}, 1: {"m.lora_A": t(0.1, 0.1)}}
    return server.aggregate(rnd, Exchange(selected=[0, 1], uploads=ups))["m.lora_A"], server


def test_the_noise_depends_on_the_seed_and_the_round_only():
    x, a = _noised(3)
    assert a.dp_round["noise_std"] == 1.0 and a.dp_round["noise_norm"] > 0  # z C / n = 2 * 1 / 2, equal weights
    assert torch.equal(x, _noised(3)[0])
    assert not torch.equal(x, _noised(4)[0]) and not torch.equal(x, _noised(3, "seed=1")[0])


def test_under_sample_weights_the_noise_follows_the_largest_weight():
    # sizes 10 and 30: normalised weights 1/4 and 3/4, one clipped upload moves the mean by up to 3/4 C,
    # so n = 4/3 and the std is z C 3/4 = 1.5 (Flower's z C / n would give 1.0)
    server = _server("fed.dp_clipping_norm=1.0", "fed.dp_noise_multiplier=2.0", sizes=(10, 30))
    server.initial = {"m.lora_A": t(0.0, 0.0)}
    server.aggregate(1, Exchange(selected=[0, 1], uploads={0: {"m.lora_A": t(0.1, 0.1)}, 1: {"m.lora_A": t(0.1, 0.1)}}))
    assert server.dp_round["noise_std"] == pytest.approx(1.5)
    assert sensitivity_clients([1.0, 1.0, 1.0]) == 3.0 and sensitivity_clients([1.0, 3.0]) == pytest.approx(4 / 3)


def test_what_dp_is_refused_for():
    with pytest.raises(SfedloraError, match="same factors every round: use it with .*, not rolora"):
        check(load_config(None, ["fed.method=rolora", "fed.dp_clipping_norm=1"]))
    with pytest.raises(SfedloraError, match="lora.init=shared"):
        check(load_config(None, ["fed.method=sfed-lora", "fed.dp_clipping_norm=1"]))
    with pytest.raises(SfedloraError, match="equal ranks"):
        check(load_config(None, ["fed.method=sfed-lora", "lora.init=shared", "fed.dp_clipping_norm=1",
                                 "lora.ranks=[2,4,4,8]"]))
    with pytest.raises(SfedloraError, match="needs fed.dp_clipping_norm"):
        check(load_config(None, ["fed.dp_noise_multiplier=1"]))
    with pytest.raises(SfedloraError, match="adaptive do not go together"):
        check(load_config(None, ["fed.method=sfed-lora", "lora.init=shared", "fed.dp_clipping_norm=1",
                                 "lora.scaling=adaptive"]))
