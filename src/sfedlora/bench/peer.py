"""`sfedlora bench`: sfedlora's engine against the way peer frameworks simulate clients.

(a) peer: clients one after another through one Hugging Face PEFT model, each client's adapter loaded
    into it (set_peft_model_state_dict) and saved back (get_peft_model_state_dict) around its K local
    steps, HF's own loss (full-vocabulary logits), torch.optim.AdamW: FederatedScope-LLM / OpenFedLLM.
    Timed with its base in fp32 and, when (b) runs in bf16, also in bf16 (fp32 adapters, as PEFT makes
    them): a comparison is only fair at the same precision.
(b) sfedlora: the clients' adapters stacked in groups of G (the automatic group size `sfedlora run`
    uses, or a fixed one), one batched forward/backward per group and local step, logits only where the
    loss needs them, per-client AdamW, at the precision the config resolves to.
Both run in one process on the same batches and initial adapters, alternating, for `repeats` rounds
each. Reported: tokens per second, achieved GFLOP/s (nominal 4 x linear-layer parameters per token:
forward plus input gradients through the frozen base) against a measured GEMM ceiling, peak RSS per
phase, the max difference between the adapters of (b) and of (a) at (b)'s precision after one round, and
last the ratio b/a against the peer at (b)'s precision (and against the fp32 peer beside it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sfedlora.adapters.inject import init_adapter_state, load_group, read_group
from sfedlora.adapters.peft import state_key, to_state_dict
from sfedlora.bench.memory import PeakRSS
from sfedlora.client.optim import StackedOptimizer
from sfedlora.client.probe import probe_step
from sfedlora.client.train import train_group
from sfedlora.config import TrainConfig, load_config
from sfedlora.config.schema import opt
from sfedlora.runtime.models import load_model
from sfedlora.runtime.resolve import resolve_device, resolve_precision
from sfedlora.runtime.setup import DTYPES, load_base
from sfedlora.simulation import grouping

TARGETS = {"smollm2-135m": ["q_proj", "v_proj"], "minilm-l6": ["query", "value"],
           "smollm2-random": ["q_proj", "v_proj"],  # SmolLM2's shapes, random weights (timings only)
           "tiny-llama": ["q_proj", "v_proj"], "tiny-bert": ["query", "value"]}  # tiny: tests and smoke runs


@dataclass
class BenchConfig:
    """A benchmark's workload (`sfedlora bench` takes each field as an option)."""

    workload: str = opt("smollm2-135m", "the two offline models (SmolLM2 instruction tuning, MiniLM classification), "
                        "or tiny random ones (smoke tests)", choices=tuple(TARGETS))
    clients: int = opt(4, "N (with --memory: 100 unless given)")
    rank: int = opt(16, "LoRA rank")
    steps: int = opt(3, "local steps per round")
    batch: int = opt(2, "examples per client per step")
    seq: int = opt(128, "tokens per example")
    repeats: int = opt(3, "timed rounds of each (after one warm-up)")
    precision: str = opt("auto", "for (b); with --memory, the run's", choices=("auto", "fp32", "bf16"))
    seed: int = opt(0, "seed of the data and the adapters")
    group_size: int | str = opt("auto", "(b)'s clients per batched step: auto (the automatic group size `sfedlora "
                                "run` uses) or a number")


def _matmul_rate(n: int, dtype: torch.dtype, device: str, reps: int) -> float:
    """GFLOP/s of an (n x n) @ (n x n) product, after two untimed warm-up products."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def gemm_ceiling(dtype: torch.dtype, n: int = 2048, device: str = "cpu", budget_s: float = 5.0) -> float:
    """The GEMM throughput a precision reaches here: GFLOP/s of n x n products (4 timed). Where that would
    take longer than `budget_s` (bf16 emulated on an AVX2 CPU runs at ~0.2 GFLOP/s: minutes at n = 2048),
    n is halved until it fits, judged by a probe at n = 256; the rate is then that of the smaller size."""
    probe = _matmul_rate(256, dtype, device, reps=1)
    while n > 256 and 2 * n**3 * 5 / (probe * 1e9) > budget_s:
        n //= 2
    return _matmul_rate(n, dtype, device, reps=4)


def make_batches(cfg: BenchConfig, vocab: int, task: str) -> list[list[dict[str, torch.Tensor]]]:
    """batches[client][step]: random tokens; LM: loss on the second half (the 'response')."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.clients):
        steps = []
        for _ in range(cfg.steps):
            ids = torch.randint(5, vocab, (cfg.batch, cfg.seq), generator=g)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if task == "classification":
                batch["label"] = torch.randint(0, 4, (cfg.batch,), generator=g)
            else:
                labels = ids.clone()
                labels[:, : cfg.seq // 2] = -100
                batch["labels"] = labels
            steps.append(batch)
        out.append(steps)
    return out


def linear_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


class Peer:
    """(a): one PEFT model, clients trained one after another with adapter load/save."""

    def __init__(self, cfg: BenchConfig, task: str, dtype: torch.dtype, device: torch.device) -> None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)  # the same random classifier init as (b)'s
        model, _ = load_model(cfg.workload, task, 4, dtype)
        self.model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, lora_dropout=0.0,
                                                      target_modules=TARGETS[cfg.workload])).to(device).eval()
        self.device = device

    def round(self, states: list[dict[str, torch.Tensor]], batches: list[list[dict[str, torch.Tensor]]],
              tcfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        out = []
        for state, client_batches in zip(states, batches, strict=True):
            set_peft_model_state_dict(self.model, state)
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=tcfg.lr, betas=(tcfg.betas[0], tcfg.betas[1]), eps=tcfg.eps,
                                    weight_decay=0.0)
            for batch in client_batches:
                b = {k: v.to(self.device) for k, v in batch.items()}
                if "label" in b:
                    b["labels"] = b.pop("label")
                self.model(**b).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            out.append({k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()})
        return out


@dataclass
class Engine:
    """sfedlora's side of the bench: one round of the batched engine (`round()` returns every client's
    adapters), the shared initial adapters and batches, and what the round is measured by."""

    round: Callable[[], list[dict[str, torch.Tensor]]]
    init: list[dict[str, torch.Tensor]]
    batches: list[list[dict[str, torch.Tensor]]]
    task: str
    device: torch.device
    precision: str
    tokens: int  # per round
    flops: int  # nominal, per round
    groups: grouping.GroupPlan
    model: Any  # the base with the stacked adapters
    tok: Any


def engine(cfg: BenchConfig) -> Engine:
    """Set up sfedlora's side of the bench the way `sfedlora run` does (runtime.setup.load_base, the
    automatic group size of simulation.grouping unless cfg.group_size fixes it)."""
    task = "classification" if cfg.workload in ("minilm-l6", "tiny-bert") else "instruction"
    device = resolve_device("auto")
    precision = resolve_precision(cfg.precision, device)
    tcfg = TrainConfig(optimizer="adamw", lr=1e-3, grad_clip=None)
    torch.manual_seed(cfg.seed)
    run_cfg = load_config(None, [f"model.name={cfg.workload}", f"lora.targets=[{','.join(TARGETS[cfg.workload])}]"])
    ours, tok, _ = load_base(run_cfg, task, 4, device, precision, head=False)  # the set-up `sfedlora run` uses
    init = [init_adapter_state(ours, cfg.rank, torch.Generator().manual_seed(cfg.seed + c)) for c in range(cfg.clients)]
    batches = make_batches(cfg, len(tok), task)
    tokens = cfg.clients * cfg.steps * cfg.batch * cfg.seq
    row = {"input_ids": batches[0][0]["input_ids"][0].to(torch.int32),  # the probe's worst-case row
           **({"label": 0} if task == "classification" else {"n_prompt": cfg.seq // 2})}
    step_for = lambda g: probe_step(ours, tok, task, row, cfg.batch, init[0], 1.0, device, clients=g)  # noqa: E731
    plan = grouping.plan(cfg.group_size, run_cfg.train.group_memory, cfg.batch, cfg.batch, cfg.clients, device,
                         lambda: grouping.bytes_per_row(ours, step_for(1), cfg.batch), cfg.seq,
                         step_for=step_for)  # timed afresh: no cached timings

    def ours_round() -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for first in range(0, cfg.clients, plan.train):
            group = list(range(first, min(first + plan.train, cfg.clients)))
            load_group(ours, [init[c] for c in group], [1.0] * len(group), device)  # gamma = lora_alpha / r = 1
            feed = iter([{key: torch.cat([batches[c][k][key] for c in group]).to(device) for key in batches[0][k]}
                         for k in range(cfg.steps)])

            def next_batch(feed: Any = feed) -> dict[str, torch.Tensor]:
                b = next(feed)
                b["weight"] = torch.ones(b["input_ids"].shape[0], device=device)
                return b

            train_group(ours, next_batch, StackedOptimizer(tcfg), frozenset({"A", "B"}), cfg.steps, tcfg, task)
            out += read_group(ours)
        return out

    return Engine(ours_round, init, batches, task, device, precision, tokens, 4 * linear_params(ours) * tokens, plan,
                  ours, tok)


def run_bench(cfg: BenchConfig, echo: Any = print, eng: Engine | None = None) -> dict[str, Any]:
    """Time the peer and sfedlora's engine on the same workload, alternating. The peer runs in fp32 (how
    peers are usually run) and, when (b) runs in bf16, also with its base in bf16 as a user of a bf16-fast
    device would load it: the same-precision ratio is the fair one, and the one reported last. `eng`: (b)'s
    engine, set up already."""
    dtype = DTYPES
    tcfg = TrainConfig(optimizer="adamw", lr=1e-3, grad_clip=None)
    eng = eng or engine(cfg)
    ours_round, init, batches, task, device, precision = eng.round, eng.init, eng.batches, eng.task, eng.device, \
        eng.precision
    tokens, nominal = eng.tokens, eng.flops  # nominal: FLOPs a round
    peers = {f"a_{p}": Peer(cfg, task, dtype[p], device) for p in sorted({"fp32", precision})}

    names = [*peers, "b"]
    times: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, int] = dict.fromkeys(names, 0)
    results: dict[str, Any] = {}
    for rep in range(cfg.repeats + 1):  # the first round of each is a warm-up, not timed
        for name in names:
            theirs = [to_state_dict(s) for s in init]
            with PeakRSS() as mem:
                t = time.perf_counter()
                res = ours_round() if name == "b" else peers[name].round(theirs, batches, tcfg)
                elapsed = time.perf_counter() - t
            if rep:
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], mem.peak)
            results[name] = res
            echo(f"  {'warm-up' if not rep else f'round {rep}'} {name}: {elapsed:.2f} s")
    same = f"a_{precision}"
    diff = max(float((v - results[same][c][state_key(k)].to(v.device)).abs().max())
               for c in range(cfg.clients) for k, v in results["b"][c].items())
    ceiling = {p: gemm_ceiling(dtype[p], device=device.type) for p in sorted({"fp32", precision})}
    med = {k: statistics.median(v) for k, v in times.items()}
    gflops = {k: nominal / v / 1e9 for k, v in med.items()}
    at = {"a_fp32": "fp32", "a_bf16": "bf16", "b": precision}  # each side's share of its own precision's ceiling
    return {"config": cfg.__dict__, "device": str(device), "precision_b": precision, "tokens_per_round": tokens,
            "seconds": med, "tokens_per_s": {k: tokens / v for k, v in med.items()},
            "gflops": gflops, "ceiling_gflops": ceiling,
            "fraction_of_ceiling": {k: g / ceiling[at[k]] for k, g in gflops.items()},
            "groups": {"train": eng.groups.train, "rule": eng.groups.rule, **eng.groups.timed},
            "peak_rss_gb": {k: v / 1e9 for k, v in peaks.items()},
            "max_adapter_diff": diff,  # (b) against the peer at (b)'s precision, after one round
            "ratio_same_precision": med[same] / med["b"], "ratio_fp32_peer": med["a_fp32"] / med["b"]}


def report_lines(r: dict[str, Any]) -> list[str]:
    """What `sfedlora bench` prints after the timing rounds; the same-precision ratio last."""
    labels = {"a_fp32": "(a) peer, fp32: sequential PEFT", "a_bf16": "(a) peer, bf16 base: sequential PEFT",
              "b": f"(b) sfedlora batched, {r['precision_b']}, G={r['groups']['train']}"}
    lines = [f"device {r['device']}; (b) precision {r['precision_b']}; GEMM ceiling "
             + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in r["ceiling_gflops"].items())]
    if (g := r["groups"]).get("seconds_per_token"):  # (b)'s group size by measurement (simulation.grouping)
        rates = ", ".join(f"G={k}: {1 / v:.1f}" for k, v in g["seconds_per_token"].items())
        lines.append(f"group size timed (a training step, tokens/s): {rates}; rule G={g['rule_g']}, took {g['train']}")
    lines += [f"{labels[n]:<46} {r['tokens_per_s'][n]:>9.1f} tokens/s {r['gflops'][n]:>7.1f} GFLOP/s "
              f"({100 * r['fraction_of_ceiling'][n]:.0f}% of ceiling) {r['seconds'][n]:>7.2f} s/round  "
              f"peak RSS {r['peak_rss_gb'][n]:.2f} GB" for n in r["seconds"]]
    lines.append(f"max |adapter (a) - adapter (b)| after one round, both {r['precision_b']}: "
                 f"{r['max_adapter_diff']:.3g}")
    if r["precision_b"] != "fp32":
        lines.append(f"ratio b/a against the fp32 peer: {r['ratio_fp32_peer']:.2f}x (not a like-for-like comparison)")
    lines.append(f"ratio b/a at the same precision ({r['precision_b']}, tokens per second): "
                 f"{r['ratio_same_precision']:.2f}x")
    return lines


def heading(cfg: BenchConfig) -> str:
    return (f"bench {cfg.workload}: N={cfg.clients} clients, r={cfg.rank}, K={cfg.steps} steps, "
            f"{cfg.batch} x {cfg.seq} tokens per client step, {cfg.repeats} timed rounds each")

