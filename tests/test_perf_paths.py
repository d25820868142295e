"""The fast paths change nothing they should not: chunked LM-head cross-entropy, malloc settings, and
the bench's (a)/(b) agreement. No timings are asserted here (they live in `sfedlora bench`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfedlora import losses
from sfedlora.allocator import tune_malloc
from sfedlora.cli import main


def test_chunked_cross_entropy_equals_full(monkeypatch):
    monkeypatch.setattr(losses, "CE_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(30, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (30,), generator=g)
    chunked = losses.chunked_cross_entropy(head, hidden, target)
    grad_chunked = torch.autograd.grad(chunked.sum(), hidden)[0]
    full = F.cross_entropy(head(hidden), target, reduction="none")
    grad_full = torch.autograd.grad(full.sum(), hidden)[0]
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad_full)


def test_malloc_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SFEDLORA_MALLOC_TUNING", "0")
    assert tune_malloc() is False


def test_bench_runs_and_agrees(capsys, tmp_path):
    code = main(["bench", "--workload", "minilm-l6", "--clients", "2", "--steps", "2", "--seq", "16",
                 "--repeats", "1", "--precision", "fp32", "--json", str(tmp_path / "b.json")])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("ratio b/a (tokens per second): ")
    import json

    r = json.loads((tmp_path / "b.json").read_text())
    assert r["max_adapter_diff"] < 1e-3  # same adapters: two AdamW steps, float32 noise only
    assert r["tokens_per_round"] == 2 * 2 * 2 * 16
