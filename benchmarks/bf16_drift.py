"""Metric drift of the bf16 frozen base (fp32 adapters) against fp32, on the quick default run (`make run`).

Runs the embedded default twice with the same seeds, `model.precision=fp32` and `model.precision=bf16`, and
prints each round's personalised and global test accuracy side by side, then the drift. Where bf16 is fast
(CUDA, or a CPU with AVX512-BF16/AMX) bf16 runs natively. Elsewhere torch's bf16 CPU matmul is emulated
and hundreds of times slower, so this script computes every bf16 matrix product (linear layers, matmul,
bmm, attention) in fp32 from the bf16 operands and rounds the result to bf16: the numerics of a GPU's bf16
GEMM with fp32 accumulation. Everything else (layer norms, activations, residual adds, the stored
weights) stays bf16, as in a native bf16 run. The printout says which of the two it was.

    .venv/bin/python benchmarks/bf16_drift.py [CONFIG] [overrides...]   e.g. smollm2-instruct fed.rounds=4
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sfedlora.config import config_path, load_config
from sfedlora.core.metrics import PRIMARY
from sfedlora.runtime.allocator import tune_malloc
from sfedlora.runtime.records import client_values
from sfedlora.runtime.resolve import cpu_has_fast_bf16, resolve_device
from sfedlora.simulation import Simulation

PRODUCTS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
            torch.addmm, torch.baddbmm, F.scaled_dot_product_attention}


class Bf16ProductsInFp32(TorchFunctionMode):
    """bf16 matrix products computed in fp32 from their bf16 operands, the result rounded to bf16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS and any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16
                                    for a in list(args) + list(kwargs.values())):
            up = lambda a: a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a
            out = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
            return out.to(torch.bfloat16)
        return func(*args, **kwargs)


def run(config: Path, precision: str, overrides: list[str], emulate: bool) -> tuple[list[dict], str]:
    cfg = load_config(config, [f"model.precision={precision}", "checkpoint_every=0", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, Path(tmp) / "run", echo=lambda s: None, progress=False)
        t = time.perf_counter()
        if emulate:
            with Bf16ProductsInFp32():
                sim.run()
        else:
            sim.run()
        print(f"  {precision}: {time.perf_counter() - t:.1f} s", flush=True)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        return records, PRIMARY[sim.task][0]


def main() -> None:
    tune_malloc()
    args = sys.argv[1:]
    config = config_path(args.pop(0) if args and "=" not in args[0] else None)
    overrides = args
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.model.device)
    native = device.type == "cuda" or cpu_has_fast_bf16()
    how = "native bf16" if native else "bf16 emulated: products in fp32 from bf16 operands, rounded to bf16"
    print(f"bf16 drift on {config.name}, device {device} ({how})", flush=True)
    warnings.simplefilter("ignore")  # the slow-bf16 warning: the products do not run in bf16 here
    fp32, metric = run(config, "fp32", overrides, False)
    bf16, _ = run(config, "bf16", overrides, not native)
    short = metric[:4]
    print(f"{'round':>5} {'test ' + short + ' fp32':>15} {'test ' + short + ' bf16':>15} {'glob fp32':>10} "
          f"{'glob bf16':>10} {'loss fp32':>10} {'loss bf16':>10}")
    pers = lambda r: r["eval"]["personal"]["test"][metric]["weighted"]
    glob = lambda r: r["eval"].get("global", {}).get("test", {}).get(metric, float("nan"))
    def loss(r: dict) -> str:
        v = client_values(r["train_loss"])
        return f"{sum(v) / len(v):>10.4f}" if v else f"{'-':>10}"

    rows = [(a, b) for a, b in zip(fp32, bf16, strict=True) if a["eval"] and b["eval"]]
    for a, b in rows:
        print(f"{a['round']:>5} {pers(a):>15.4f} {pers(b):>15.4f} {glob(a):>10.4f} {glob(b):>10.4f} "
              f"{loss(a)} {loss(b)}")
    drift = [abs(pers(a) - pers(b)) for a, b in rows]
    a, b = rows[-1]
    print(f"final personalised test {metric}: fp32 {pers(a):.4f}, bf16 {pers(b):.4f} (drift {pers(b) - pers(a):+.4f}); "
          f"largest drift over rounds {max(drift):.4f}")

if __name__ == "__main__":
    main()
