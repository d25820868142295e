"""Where a training round's time goes (`sfedlora bench --profile`): one round of the batched engine under
torch.profiler, its operators' self time summed into categories.

Categories, by operator name, first match in this order: base GEMMs (the frozen linear layers and the LM
head: addmm, mm), adapter matmuls (the stacked LoRA products: bmm), loss (cross_entropy, log_softmax, nll,
logsumexp), attention (scaled-dot-product kernels, softmax), norms (layer_norm, rms_norm, rsqrt, pow,
mean), activations (gelu, silu, tanh), optimizer (the AdamW update: lerp, addcmul, addcdiv, sqrt, div), data
movement (copies, casts, cat, stack, embedding lookups, indexing, reshapes that copy), elementwise (add, mul
and the rest of the pointwise ops, shared by residuals, norms and the optimizer), and other. A category is
a reading aid: the attribution is by operator, not by the line of code that called it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base GEMMs", ("aten::addmm", "aten::mm", "aten::_addmm_activation")),
    ("adapter matmuls", ("aten::bmm", "aten::baddbmm")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("norms", ("layer_norm", "rms_norm", "aten::rsqrt", "aten::pow", "aten::mean", "aten::var")),
    ("activations", ("gelu", "silu", "aten::tanh", "aten::sigmoid")),
    ("optimizer", ("aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::sqrt", "aten::div", "aten::clamp")),
    ("data movement", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::cat", "aten::stack", "embedding",
                       "aten::index", "aten::gather", "aten::scatter", "aten::clone", "aten::contiguous",
                       "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty")),
    ("elementwise", ("aten::add", "aten::mul", "aten::sub", "aten::neg", "aten::where", "aten::exp",
                     "aten::sum", "aten::masked_fill", "aten::eq", "aten::ne")),
)


GEMMS = ("base GEMMs", "adapter matmuls")  # the model's own work: the share a round should be


def category(op: str) -> str:
    """The category of a profiler operator name (first match in CATEGORIES order, else 'other')."""
    for name, patterns in CATEGORIES:
        if any(p in op for p in patterns):
            return name
    return "other"


def breakdown(events: Iterable[tuple[str, float]]) -> list[tuple[str, float, float]]:
    """(category, seconds, share of the total) from (operator, self seconds) pairs, largest first."""
    totals: dict[str, float] = {}
    for op, seconds in events:
        totals[category(op)] = totals.get(category(op), 0.0) + seconds
    grand = sum(totals.values()) or 1.0
    return sorted(((k, v, v / grand) for k, v in totals.items()), key=lambda t: -t[1])


def profile(cfg: Any, echo: Any = print) -> dict[str, Any]:
    """One warm-up round, then one profiled round of the batched engine on `bench`'s workload."""
    from sfedlora.bench.peer import engine

    eng = engine(cfg)
    eng.round()  # warm-up
    return profile_round(eng)


def profile_round(eng: Any) -> dict[str, Any]:
    """One round of a set-up engine (bench.peer.engine) under torch.profiler: its operators' self time by category
    (`categories`: (category, seconds, share), largest first; `shares`: category -> share) and the largest ops."""
    import time

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = eng.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        eng.round()
    wall = time.perf_counter() - t0
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr) / 1e6) for e in prof.key_averages()]
    ops = sorted(events, key=lambda kv: -kv[1])[:8]
    categories = breakdown(events)
    return {"device": str(device), "precision": eng.precision, "tokens": eng.tokens, "wall_s": wall,
            "categories": categories, "shares": {name: share for name, _, share in categories},
            "gemm_share": sum(share for name, _, share in categories if name in GEMMS), "top_ops": ops}


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"profile of one round: device {r['device']}, {r['precision']}, {r['tokens']} tokens, "
             f"{r['wall_s']:.2f} s (under the profiler); self time by category:"]
    lines += [f"  {name:<18} {sec:>8.3f} s  {share:>6.1%}" for name, sec, share in r["categories"]]
    lines.append(f"GEMMs (base + adapter): {r['gemm_share']:.1%} of the profiled time")
    lines.append("largest operators: " + ", ".join(f"{op} {sec:.3f} s" for op, sec in r["top_ops"]))
    return lines
