"""Server optimizers (core.server_opt): each one's step, one round and two, by hand; the first aggregation of a
tensor is adopted; `none` is the mean itself; the Server steps only on what the method aggregates."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sfedlora.config import load_config
from sfedlora.core.server_opt import ServerOptimizer, ServerOptSettings, server_lr
from sfedlora.errors import SfedloraError
from sfedlora.methods import get_method
from sfedlora.runtime.protocol import Exchange, Server, known_start
from sfedlora.runtime.resolve import check, resolve


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def two_rounds(s: ServerOptSettings, x0: float, means: tuple[float, float]) -> tuple[float, float]:
    opt = ServerOptimizer(s)
    latest = {"w": t(x0)}
    x1 = opt.step(latest, {"w": t(means[0])})["w"]
    x2 = opt.step({"w": x1}, {"w": t(means[1])})["w"]
    return float(x1), float(x2)


def test_avgm_by_hand():
    # delta 1 -> m 1 -> x 1 + 0.5 * 1 = 1.5; delta 2.5 - 1.5 = 1 -> m 0.9 + 1 = 1.9 -> x 1.5 + 0.95 = 2.45
    assert two_rounds(ServerOptSettings("avgm", lr=0.5, momentum=0.9), 1.0, (2.0, 2.5)) == pytest.approx((1.5, 2.45))


def test_avgm_without_momentum_at_rate_one_is_fedavg():
    opt = ServerOptimizer(ServerOptSettings("avgm", lr=1.0, momentum=0.0))
    mean = {"w": t(0.25, -3.0)}
    assert torch.allclose(opt.step({"w": t(1.0, 2.0)}, mean)["w"], mean["w"])


def test_adagrad_by_hand():
    # tau 0.75: v0 = 0.5625. delta 1: m = 0.5, v = 1.5625, sqrt 1.25 + 0.75 = 2 -> x = 1 + 0.2 * 0.5 / 2 = 1.05
    # delta 3.05 - 1.05 = 2: m = 0.25 + 1 = 1.25, v = 1.5625 + 4 = 5.5625, sqrt 2.35850... + 0.75
    s = ServerOptSettings("adagrad", lr=0.2, beta1=0.5, tau=0.75)
    x1, x2 = two_rounds(s, 1.0, (2.0, 3.05))
    assert x1 == pytest.approx(1.05)
    assert x2 == pytest.approx(1.05 + 0.2 * 1.25 / (5.5625 ** 0.5 + 0.75))


def test_yogi_by_hand():
    # beta2 0.5, tau 0.75: v0 = 0.5625 < delta^2 = 1, so v grows: v = 0.5625 + 0.5 * 1 = 1.0625 (adam would shrink it)
    s = ServerOptSettings("yogi", lr=0.1, beta1=0.0, beta2=0.5, tau=0.75)
    opt = ServerOptimizer(s)
    x1 = opt.step({"w": t(0.0)}, {"w": t(1.0)})["w"]
    assert float(opt.v["w"]) == pytest.approx(1.0625)
    assert float(x1) == pytest.approx(0.1 * 1.0 / (1.0625 ** 0.5 + 0.75))


def test_yogi_second_round_shrinks_v_where_it_exceeds_delta_squared():
    # round 2's mean at x1 + 0.5: delta 0.5, v = 1.0625 - 0.5 * 0.25 * sign(1.0625 - 0.25) = 0.9375; m = delta
    s = ServerOptSettings("yogi", lr=0.1, beta1=0.0, beta2=0.5, tau=0.75)
    opt = ServerOptimizer(s)
    x1 = opt.step({"w": t(0.0)}, {"w": t(1.0)})["w"]
    x2 = opt.step({"w": x1}, {"w": x1 + 0.5})["w"]
    assert float(opt.v["w"]) == pytest.approx(0.9375)
    assert float(x2) == pytest.approx(float(x1) + 0.1 * 0.5 / (0.9375 ** 0.5 + 0.75))


def test_adam_by_hand():
    # beta1 0.5, beta2 0.75, tau 0.5: v0 = 0.25. delta 0.5: m = 0.25, v = 0.1875 + 0.0625 = 0.25, sqrt 0.5 + 0.5 = 1
    # -> x1 = 2 + 0.4 * 0.25 = 2.1; delta 0.5 again: m = 0.125 + 0.25 = 0.375, v = 0.25 -> x2 = 2.1 + 0.4 * 0.375
    s = ServerOptSettings("adam", lr=0.4, beta1=0.5, beta2=0.75, tau=0.5)
    assert two_rounds(s, 2.0, (2.5, 2.6)) == pytest.approx((2.1, 2.25))


def test_steps_are_element_wise_and_keep_the_dtype():
    s = ServerOptSettings("adam", lr=0.4, beta1=0.5, beta2=0.75, tau=0.5)
    out = ServerOptimizer(s).step({"w": t(2.0, 0.0)}, {"w": t(2.5, -0.5)})["w"]
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx([2.1, -0.1])


def test_a_tensor_without_a_previous_value_is_adopted_and_its_moments_start_next_time():
    opt = ServerOptimizer(ServerOptSettings("avgm", lr=0.5, momentum=0.9))
    mean = {"A": t(3.0), "head": t(1.0)}
    out = opt.step({"head": t(0.0)}, mean)
    assert out["A"] is mean["A"] and "A" not in opt.m
    assert float(out["head"]) == pytest.approx(0.5)


def test_none_is_the_mean_itself():
    opt = ServerOptimizer(ServerOptSettings("none"))
    mean = {"w": t(1.0)}
    assert opt.step({"w": t(5.0)}, mean) is mean and not opt.on


def test_saved_moments_restore_to_the_same_next_step():
    s = ServerOptSettings("adam", lr=0.4, beta1=0.5, beta2=0.75, tau=0.5)
    a = ServerOptimizer(s)
    a.step({"w": t(2.0)}, {"w": t(2.5)})
    b = ServerOptimizer(s)
    b.restore(a.saved())
    assert torch.equal(a.step({"w": t(2.1)}, {"w": t(2.6)})["w"], b.step({"w": t(2.1)}, {"w": t(2.6)})["w"])


def test_default_server_rates():
    assert server_lr("avgm", None) == 1.0 and server_lr("adam", None) == 0.01 and server_lr("yogi", 0.3) == 0.3


def _server(method: str, *over: str) -> Server:
    cfg = load_config(None, [f"fed.method={method}", "fed.clients=2", "lora.rank=2", *over])
    m = get_method(method)
    sizes = [{"train": 10, "val": 2, "test": 2}, {"train": 30, "val": 2, "test": 2}]
    return Server(cfg, m, replace(resolve(cfg, m, [10, 30]), sizes=sizes))


def test_the_fedsa_server_steps_on_a_and_the_head_and_never_sees_b():
    server = _server("sfed-lora", "fed.server_optimizer=avgm", "fed.server_lr=0.5", "fed.server_momentum=0")
    assert server.resolved.server_lr == 0.5
    ups = [{"m.lora_A": t(1.0), "head.w": t(2.0)}, {"m.lora_A": t(3.0), "head.w": t(6.0)}]  # weights 1/4, 3/4
    first = server.aggregate(1, Exchange(selected=[0, 1], uploads=dict(enumerate(ups))))
    assert first == {"m.lora_A": t(2.5), "head.w": t(5.0)}  # no previous global value: the mean
    ups = [{"m.lora_A": t(4.5), "head.w": t(5.0)}, {"m.lora_A": t(4.5), "head.w": t(5.0)}]
    second = server.aggregate(2, Exchange(selected=[0, 1], uploads=dict(enumerate(ups))))
    assert float(second["m.lora_A"]) == pytest.approx(2.5 + 0.5 * 2.0) and float(second["head.w"]) == 5.0
    assert server.latest == second


def test_the_first_step_starts_from_what_every_client_started_from():
    """FedIT with a shared init: B starts at 0 and A at the shared draw, so round 1 is a step (eta 0.5) from them;
    with independent inits (known_start drops A) A's first mean is adopted."""
    server = _server("fedit", "fed.server_optimizer=avgm", "fed.server_lr=0.5", "fed.server_momentum=0",
                     "lora.init=shared")
    fresh = {"m.lora_A": t(1.0), "m.lora_B": t(0.0), "head.w": t(0.5)}
    server.initial = known_start(fresh, "shared")
    ups = {0: {"m.lora_A": t(3.0), "m.lora_B": t(2.0), "head.w": t(0.5)},
           1: {"m.lora_A": t(3.0), "m.lora_B": t(2.0), "head.w": t(0.5)}}
    first = server.aggregate(1, Exchange(selected=[0, 1], uploads=ups))
    assert [float(first[k]) for k in ("m.lora_A", "m.lora_B", "head.w")] == pytest.approx([2.0, 1.0, 0.5])
    assert known_start(fresh, "independent") == {"m.lora_B": t(0.0), "head.w": t(0.5)}


def test_the_methods_and_ranks_a_server_optimizer_is_refused_for():
    for method in ("flora", "flexlora", "hetlora", "raflora"):
        with pytest.raises(SfedloraError, match="fed.server_optimizer .* is not defined for it"):
            check(load_config(None, [f"fed.method={method}", "fed.server_optimizer=adam"]))
    with pytest.raises(SfedloraError, match="needs equal ranks"):
        check(load_config(None, ["fed.method=sfed-lora", "fed.server_optimizer=adam", "lora.ranks=[2,4,4,8]"]))
    with pytest.raises(SfedloraError, match="fed.server_lr must be > 0"):
        load_config(None, ["fed.server_optimizer=adam", "fed.server_lr=0"])
    with pytest.raises(SfedloraError, match="fed.server_optimizer is none"):
        check(load_config(None, ["fed.server_lr=0.1"]))
    with pytest.raises(SfedloraError, match="adaptive do not go together"):
        check(load_config(None, ["fed.server_optimizer=adam", "lora.scaling=adaptive"]))
    assert check(load_config(None, ["fed.method=rolora", "fed.server_optimizer=yogi"])).name == "rolora"
