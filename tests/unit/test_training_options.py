"""Learning-rate schedules, gradient accumulation and gradient checkpointing, each against the real
library or the plain computation it must equal."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_batch, tiny_bert, tiny_llama
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from sfedlora.adapters.inject import init_adapter_state, inject_adapters, load_group, read_group
from sfedlora.client.checkpointing import blocks, checkpointed
from sfedlora.client.optim import StackedOptimizer
from sfedlora.client.train import train_group
from sfedlora.config import TrainConfig
from sfedlora.core.schedule import global_step, lr_factor
from sfedlora.runtime.logits import prepare_fast_logits

TOTAL, WARMUP = 20, 3


@pytest.mark.parametrize(("name", "make"), [
    ("constant", lambda o: get_constant_schedule_with_warmup(o, WARMUP)),
    ("linear", lambda o: get_linear_schedule_with_warmup(o, WARMUP, TOTAL)),
    ("cosine", lambda o: get_cosine_schedule_with_warmup(o, WARMUP, TOTAL)),
])
def test_schedules_equal_transformers(name, make):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    theirs = []
    for _ in range(TOTAL):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [0.1 * lr_factor(name, s, TOTAL, WARMUP) for s in range(TOTAL)]
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_the_step_count_is_global_across_rounds():
    assert [global_step(r, k, 4) for r in (1, 2, 3) for k in (0, 3)] == [0, 3, 4, 7, 8, 11]


def test_scheduled_adamw_equals_torch_adamw_under_the_transformers_schedule():
    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(2, 5, generator=g), [torch.randn(2, 5, generator=g) for _ in range(6)]
    cfg = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1, lr_schedule="cosine", warmup_steps=2)
    ours = torch.nn.Parameter(start.clone())
    opt = StackedOptimizer(cfg)
    for s, grad in enumerate(grads):
        opt.lr = cfg.lr * lr_factor(cfg.lr_schedule, s, 6, cfg.warmup_steps)
        ours.grad = grad.clone()
        opt.step({"w": ours})
    for c in range(2):  # client c alone, as torch and transformers do it
        theirs = torch.nn.Parameter(start[c].clone())
        topt = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.1)
        sched = get_cosine_schedule_with_warmup(topt, 2, 6)
        for grad in grads:
            theirs.grad = grad[c].clone()
            topt.step()
            sched.step()
        torch.testing.assert_close(ours.data[c], theirs.data, rtol=1e-6, atol=1e-7)


def _cls_batch(g, rows, seq=9):
    ids = torch.randint(1, 64, (rows, seq), generator=g)
    labels = torch.randint(0, 3, (rows,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": labels}


def _train(task, batches, cfg, steps, clients=2):
    """batches[i]: the i-th (micro-)batch, client-major rows."""
    model = tiny_llama() if task != "classification" else tiny_bert()
    if task != "classification":
        prepare_fast_logits(model)
    inject_adapters(model, "qv", head=task == "classification")
    states = [init_adapter_state(model, 4, torch.Generator().manual_seed(c)) for c in range(clients)]
    for s in states:  # B != 0 so that A gets a gradient from the first step
        for k in s:
            if k.endswith("lora_B"):
                s[k] = torch.randn(s[k].shape, generator=torch.Generator().manual_seed(7)) * 0.1
    load_group(model, states, [2.0] * clients)
    feed = iter(batches)

    def next_batch():
        b = next(feed)
        return {**b, "weight": torch.ones(b["input_ids"].shape[0])}

    stats = train_group(model, next_batch, StackedOptimizer(cfg), frozenset({"A", "B", "head"}), steps, cfg, task)
    return read_group(model), stats


def _split(batch, clients, parts):
    """A client-major batch into `parts` micro-batches, each with rows/parts rows of every client."""
    rows = batch["input_ids"].shape[0] // clients
    per = rows // parts
    out = []
    for i in range(parts):
        idx = [c * rows + i * per + j for c in range(clients) for j in range(per)]
        out.append({k: v[idx] for k, v in batch.items()})
    return out


@pytest.mark.parametrize("task", ["instruction", "classification"])
def test_accumulated_micro_batches_equal_the_large_batch(task):
    g = torch.Generator().manual_seed(1)
    if task == "classification":
        big = [_cls_batch(g, 8) for _ in range(2)]
    else:
        big = [lm_batch(g, 8) for _ in range(2)]  # 2 clients x 4 rows, 2 steps
    one = TrainConfig(optimizer="adamw", lr=0.01, batch_size=4)
    accum = TrainConfig(optimizer="adamw", lr=0.01, batch_size=2, grad_accum_steps=2)
    a, sa = _train(task, big, one, 2)
    b, sb = _train(task, [m for batch in big for m in _split(batch, 2, 2)], accum, 2)
    for x, y in zip(a, b, strict=True):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6)
    assert sa.loss == pytest.approx(sb.loss, rel=1e-5) and sa.tokens == sb.tokens


@pytest.mark.parametrize("task", ["instruction", "classification"])
def test_gradient_checkpointing_changes_nothing_but_memory(task):
    g = torch.Generator().manual_seed(2)
    if task == "classification":
        batches = [_cls_batch(g, 4) for _ in range(3)]
    else:
        batches = [lm_batch(g, 4) for _ in range(3)]
    plain, sp = _train(task, batches, TrainConfig(optimizer="sgd", lr=0.1), 3)
    ckpt, sc = _train(task, batches, TrainConfig(optimizer="sgd", lr=0.1, gradient_checkpointing=True), 3)
    for x, y in zip(plain, ckpt, strict=True):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    assert sp.grad_norm_A == sc.grad_norm_A and sp.out_var == pytest.approx(sc.out_var, rel=1e-6)


def test_checkpointing_wraps_the_blocks_and_unwraps_them():
    model = tiny_llama()
    layers = blocks(model)
    assert layers is model.model.layers and len(layers) == 2
    with checkpointed(model, True) as n:
        assert n == 2 and "forward" in vars(layers[0])
    assert "forward" not in vars(layers[0])
    with checkpointed(model, False) as n:
        assert n == 0


def _prox_start(seeds):
    model = tiny_llama()
    prepare_fast_logits(model)
    inject_adapters(model, "qv", head=False)
    states = [init_adapter_state(model, 4, torch.Generator().manual_seed(s)) for s in seeds]
    for s, seed in zip(states, seeds, strict=True):
        for k in s:
            if k.endswith("lora_B"):
                s[k] = torch.randn(s[k].shape, generator=torch.Generator().manual_seed(100 + seed)) * 0.1
    return model, states


def _prox_train(batches, cfg, steps, seeds, anchored):
    """SGD steps of a group of clients (one per seed, client-major rows) from adapters with B != 0."""
    model, states = _prox_start(seeds)
    load_group(model, states, [2.0] * len(seeds))
    feed = iter(batches)

    def next_batch():
        b = next(feed)
        return {**b, "weight": torch.ones(b["input_ids"].shape[0])}

    stats = train_group(model, next_batch, StackedOptimizer(cfg), frozenset({"A", "B"}), steps, cfg, "instruction",
                        anchored=anchored)
    return read_group(model), stats


def test_fedprox_adds_mu_times_the_distance_to_the_download_and_only_on_the_anchored_factors():
    """SGD without clipping: step 1 is the same with and without the term (w = w_0); at step 2 the task
    gradient is the same too (same w_1), so w_2 with the term = w_2 without - lr mu (w_1 - w_0), by hand, on A;
    B, not anchored (a FedSA client's own), is the same in both."""
    g = torch.Generator().manual_seed(5)
    batches = [lm_batch(g, 2) for _ in range(2)]
    plain_cfg = TrainConfig(optimizer="sgd", lr=0.5, grad_clip=None)
    prox_cfg = TrainConfig(optimizer="sgd", lr=0.5, grad_clip=None, prox_mu=0.3)
    w0 = _prox_start([0])[1][0]
    w1 = _prox_train(batches[:1], plain_cfg, 1, [0], frozenset({"A"}))[0][0]
    plain, sp = _prox_train(batches, plain_cfg, 2, [0], frozenset({"A"}))
    prox, sx = _prox_train(batches, prox_cfg, 2, [0], frozenset({"A"}))
    for k in w0:
        if k.endswith("lora_A"):
            torch.testing.assert_close(prox[0][k], plain[0][k] - 0.5 * 0.3 * (w1[k] - w0[k]), rtol=1e-5, atol=1e-7)
            assert not torch.equal(w1[k], w0[k])
        else:
            torch.testing.assert_close(prox[0][k], plain[0][k], rtol=0, atol=0)
    assert sx.grad_norm_A_steps == sp.grad_norm_A_steps  # the recorded norms are the task loss's


def test_fedprox_in_a_batched_group_equals_each_client_alone():
    """Each client's term is against its own download: two clients trained together equal each one alone."""
    g = torch.Generator().manual_seed(6)
    batches = [lm_batch(g, 4) for _ in range(3)]  # 2 clients x 2 rows, client-major
    cfg = TrainConfig(optimizer="sgd", lr=0.5, prox_mu=0.5)
    both, _ = _prox_train(batches, cfg, 3, [0, 1], frozenset({"A", "B"}))
    for c in (0, 1):
        alone, _ = _prox_train([{k: v[2 * c:2 * c + 2] for k, v in b.items()} for b in batches], cfg, 3, [c],
                               frozenset({"A", "B"}))
        for k in alone[0]:
            torch.testing.assert_close(both[c][k], alone[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("method", "rnd", "kinds"), [
    ("sfed-lora", 1, {"A", "head"}), ("fedit", 1, {"A", "B", "head"}), ("ffa-lora", 1, {"B", "head"}),
    ("rolora", 1, {"B", "head"}), ("rolora", 2, {"A", "head"})])
def test_fedprox_anchors_what_the_server_aggregates_and_never_a_fedsa_clients_own_b(method, rnd, kinds, monkeypatch):
    """client.step.train hands the local steps the factor kinds the method uploads (and trains) that round."""
    from types import SimpleNamespace

    from sfedlora.client import local, step
    from sfedlora.config import load_config
    from sfedlora.methods import get_method

    seen = {}

    def fake(*args, **kwargs):
        seen["anchored"] = kwargs["anchored"]
        return [], [], []

    monkeypatch.setattr(local, "train_clients", fake)
    engine = SimpleNamespace(cfg=load_config(None, ["train.prox_mu=0.1"]), method=get_method(method), model=None,
                             tok=None, task="classification", device=torch.device("cpu"))
    step.train(engine, rnd, [], [], [], [])
    assert seen["anchored"] == kinds
