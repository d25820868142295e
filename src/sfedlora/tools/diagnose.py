"""A numerical check of the SFed-LoRA scaling theorem (arXiv 2603.08058, Theorem 4.2) on a wide linear
adapter, with no pretrained model.

Setting: N clients each hold an adapter gamma * B_i A_i on a d-wide layer, A_i drawn N(0, 1/d),
independently per client (the proof's assumption) or one draw shared by all (`inits`), B_i = 0. Each
round every client takes K SGD steps on a shared
linear-regression target (a random teacher map, Theta(1) per output entry), then the server averages A
(FedSA-LoRA) and each client keeps its B. After the last round we measure, on fresh inputs, the RMS of
one entry of the adapter output gamma * B_i A x (forward stability), on the inputs of each client's
last local step (`out_rms_seen`, where (A x).(A x) sums r coherent terms, as in the proof) and on fresh
inputs (`out_rms`, where the r terms are mostly incoherent at finite width), the RMS of one entry of the input
gradient gamma * A^T B_i^T g for a unit-variance g (backward stability), and the Frobenius norms of the
parameter gradients of A and B in the last round. The log-log slope of each quantity against r (N
fixed) and against N (r fixed) is fitted per scaling rule and init. The theorem predicts slopes near 0
for `sfed` in both r and N under independent inits; it does not predict the sign or size of the others'
slopes, which we report as measured. `adaptive` (core.adaptive) starts at N_eff = 1 and measures
N_eff = sum_i w_i |A_i|^2 / |sum_i w_i A_i|^2 at the first averaging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sfedlora.config.schema import opt
from sfedlora.core.adaptive import n_eff_first
from sfedlora.core.scaling import scaling
from sfedlora.tools.stats import slope

QUANTITIES = ("out_rms_seen", "out_rms", "in_grad_rms", "grad_norm_A", "grad_norm_B")


@dataclass
class DiagnoseConfig:
    """The diagnosis's grid and training (`sfedlora diagnose` takes each field as an option)."""

    width: int = opt(512, "layer width d")
    ranks: list[int] = opt([4, 16, 64, 256, 1024], "ranks r swept at fixed N")
    clients: list[int] = opt([1, 2, 4, 8, 16, 32], "client counts N swept at fixed r")
    fixed_rank: int = opt(64, "r while N is swept")
    fixed_clients: int = opt(8, "N while r is swept")
    rules: list[str] = opt(["lora", "rslora", "sfed", "adaptive"], "scaling rules compared")
    inits: list[str] = opt(["independent", "shared"], "A initialisations compared")
    alpha: float = opt(1.0, "alpha in every rule's gamma")
    rounds: int = opt(3, "rounds")
    steps: int = opt(5, "local SGD steps per round")
    lr: float = opt(0.002, "SGD learning rate")
    batch: int = opt(16, "inputs per local step")
    seed: int = opt(0, "seed of the teacher, the inputs and the initialisations")


def simulate(rule: str, rank: int, n_clients: int, cfg: DiagnoseConfig, init: str = "independent") -> dict[str, float]:
    """Run FedSA-LoRA on the synthetic task; return the measured quantities."""
    d, b = cfg.width, cfg.batch
    g = torch.Generator().manual_seed(cfg.seed)
    teacher = torch.randn(d, d, generator=g) / math.sqrt(d)  # y = teacher x: entries ~ N(0, 1)
    adaptive = rule == "adaptive"
    gamma = scaling("rslora" if adaptive else rule, cfg.alpha, rank, n_clients)  # adaptive: N_eff = 1 at first
    drawn = torch.randn(1 if init == "shared" else n_clients, rank, d, generator=g) / math.sqrt(d)
    A = drawn.expand(n_clients, rank, d).clone().requires_grad_()
    B = torch.zeros(n_clients, d, rank, requires_grad=True)
    norms_a: list[float] = []
    norms_b: list[float] = []
    for rnd in range(cfg.rounds):
        last = rnd == cfg.rounds - 1
        for _ in range(cfg.steps):
            x = torch.randn(n_clients, b, d, generator=g)  # (N, batch, d)
            y = x @ teacher.T
            h = gamma * torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))  # (N, batch, d)
            loss = 0.5 * (h - y).square().sum(-1).mean(-1).sum()  # sum over clients of each one's mean loss
            ga, gb = torch.autograd.grad(loss, (A, B))
            if last:
                norms_a.append(float(ga.flatten(1).norm(dim=1).mean()))
                norms_b.append(float(gb.flatten(1).norm(dim=1).mean()))
            with torch.no_grad():
                A -= cfg.lr * ga
                B -= cfg.lr * gb
        with torch.no_grad():
            if adaptive and rnd == 0:  # the first aggregation measures N_eff
                gamma = scaling("adaptive", cfg.alpha, rank, n_eff_first(list(A), [1.0] * n_clients))
            A[:] = A.mean(0, keepdim=True)  # FedSA-LoRA: the server averages A, every client keeps its B
    with torch.no_grad():
        seen = gamma * torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))  # last local batch
        x = torch.randn(n_clients, 64, d, generator=g)
        out = gamma * torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))
        grad_out = torch.randn(n_clients, 64, d, generator=g)
        in_grad = gamma * torch.bmm(torch.bmm(grad_out, B), A)  # (N, 64, d): dL/dx through the adapter
    rms = lambda t: float(t.square().mean().sqrt())
    return {"out_rms_seen": rms(seen), "out_rms": rms(out), "in_grad_rms": rms(in_grad),
            "grad_norm_A": sum(norms_a) / len(norms_a), "grad_norm_B": sum(norms_b) / len(norms_b)}


def run_diagnose(cfg: DiagnoseConfig, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    arms = [(rule, init) for init in cfg.inits for rule in cfg.rules]
    jobs = [(arm, "rank", r) for arm in arms for r in cfg.ranks]
    jobs += [(arm, "clients", n) for arm in arms for n in cfg.clients]
    points: dict[str, dict[str, list[dict[str, float]]]] = {f"{rule} / {init}": {"rank": [], "clients": []}
                                                            for rule, init in arms}
    for (rule, init), axis, value in tqdm(jobs, desc="diagnose", unit="run", disable=not progress):
        rank, n = (value, cfg.fixed_clients) if axis == "rank" else (cfg.fixed_rank, value)
        points[f"{rule} / {init}"][axis].append({"x": value, **simulate(rule, rank, n, cfg, init)})
    slopes = {
        rule: {axis: {q: slope([p["x"] for p in pts], [p[q] for p in pts]) for q in QUANTITIES}
               for axis, pts in axes.items()}
        for rule, axes in points.items()
    }
    return {"config": cfg.__dict__, "points": points, "slopes": slopes}


def slope_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    header = ["rule / init"] + [f"{q} vs r" for q in QUANTITIES] + [f"{q} vs N" for q in QUANTITIES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule, axes in result["slopes"].items():
        cells = [f"{axes['rank'][q]:+.3f}" for q in QUANTITIES] + [f"{axes['clients'][q]:+.3f}" for q in QUANTITIES]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    note = (f"log-log slopes; r in {cfg['ranks']} at N = {cfg['fixed_clients']}, N in {cfg['clients']} at "
            f"r = {cfg['fixed_rank']}; width {cfg['width']}, {cfg['rounds']} rounds x {cfg['steps']} SGD steps, "
            f"lr {cfg['lr']}, alpha {cfg['alpha']}")
    return "\n".join(lines) + f"\n\n{note}\n"


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, axis, label in ((0, "rank", "rank r"), (1, "clients", "clients N")):
        for row, q in enumerate(("out_rms_seen", "grad_norm_B")):
            ax = axes[row][col]
            for rule, axes_pts in result["points"].items():
                pts = axes_pts[axis]
                ax.plot([p["x"] for p in pts], [p[q] for p in pts], marker="o",
                        label=f"{rule} (slope {result['slopes'][rule][axis][q]:+.2f})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(q)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("FedSA-LoRA on a wide linear adapter: stability in r and N per scaling rule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out: Path) -> str:
    """diagnose.json, diagnose.md (the slope table, also returned) and diagnose.png in `out`."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    table = slope_table(result)
    (out / "diagnose.json").write_text(json.dumps(result, indent=1))
    (out / "diagnose.md").write_text(table)
    plot(result, out / "diagnose.png")
    return table

