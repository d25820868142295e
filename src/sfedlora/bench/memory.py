"""`sfedlora bench --memory`: what N simulated clients cost in memory and time, predicted and measured.

The engine's claim: a run costs the base model once, plus one group's activations, plus the client states
it holds: N x (adapter + optimizer state) with the memory client store, a round's P participants' with the
disk store (simulation.clientstore), whatever N is. This runs real rounds of the in-process runner (AdamW,
optimizer state kept across rounds so that every state is as large as it gets) and sets the claim's terms,
each computed from the tensors themselves, against the process's measured memory: peak resident memory on
the CPU (sampled every 5 ms), torch's peak allocated memory on CUDA; and reports the time per round.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sfedlora.adapters.inject import group_parameters
from sfedlora.config import config_path, load_config
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir
from sfedlora.simulation import grouping
from sfedlora.simulation.grouping import SAFETY

WORKLOAD_CONFIGS = {"minilm-l6": "default", "smollm2-135m": "smollm2-instruct"}  # built-in config names


def memory_overrides(clients: int, rank: int, steps: int, batch: int, seq: int, per_round: int = 0, rounds: int = 1,
                     examples: int = 0) -> list[str]:
    """`rounds` rounds of `per_round` sampled clients (0: all), AdamW with kept state, IID data (`examples`
    records; 0: 50 per client), little evaluation: at most `per_round` clients, 2 examples per split."""
    return [f"fed.clients={clients}", f"fed.clients_per_round={per_round}", f"fed.rounds={rounds}",
            f"fed.local_steps={steps}", f"lora.rank={rank}", f"train.batch_size={batch}", f"model.max_length={seq}",
            "train.optimizer=adamw", "train.optimizer_state=keep", "data.partition=iid",
            f"data.max_examples={examples or clients * 50}", f"data.min_partition_size={3 if examples else 10}",
            "eval.initial=false", "eval.max_examples=2", f"eval.clients={per_round}", "eval.samples=0",
            "eval.global_model=false", "checkpoint_every=0"]


def tensor_bytes(tensors: Any) -> int:
    """Bytes of every tensor in a (nested) dict / list of tensors."""
    if isinstance(tensors, torch.Tensor):
        return tensors.nbytes
    if isinstance(tensors, dict):
        return sum(tensor_bytes(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(v) for v in tensors)
    return 0


def base_model_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers of the frozen model, without the installed group's adapters and head."""
    group = {p.untyped_storage().data_ptr() for p in group_parameters(model).values()}
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in group:
            seen[ptr] = t.untyped_storage().nbytes()
    return sum(seen.values())


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak = self.rss()
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    @staticmethod
    def rss() -> int:
        """This process's resident memory now, in bytes (Linux /proc)."""
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096


class DeviceMemory:
    """Current and peak memory of this process on its device: resident memory on CPU, allocated on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return PeakRSS.rss()

    def peak_of(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            out = fn()
            return out, torch.cuda.max_memory_allocated(self.device)
        with PeakRSS() as mem:
            out = fn()
        return out, mem.peak


def workload_config(workload: str) -> Path | None:
    """The built-in run config a bench workload stands for (None: the defaults)."""
    return config_path(WORKLOAD_CONFIGS[workload])


def memory_account(config: Path | None, overrides: list[str], echo: Callable[[str], None] = print) -> dict[str, Any]:
    from sfedlora.runtime.resolve import resolve_device
    from sfedlora.simulation import Simulation

    cfg = load_config(config, overrides)
    meter = DeviceMemory(resolve_device(cfg.model.device))
    start = meter.now()  # this process before the model and the data (imports done)
    with tempfile.TemporaryDirectory(prefix="sfedlora-memory-") as tmp:
        t0 = time.perf_counter()
        sim, setup_peak = meter.peak_of(lambda: Simulation(cfg, Path(tmp) / "run", echo=lambda s: None,
                                                           progress=False))
        after_setup = meter.now()
        echo(f"  set-up: {time.perf_counter() - t0:.1f} s; groups {sim.groups.train} (train) / {sim.groups.eval} "
             f"(eval) / {sim.groups.decoding} (decode) clients, rule {sim.groups.rule}")
        t1 = time.perf_counter()
        _, round_peak = meter.peak_of(sim.run)
        walls = [r["wall_s"] for r in rundir.records(Path(tmp) / "run")]
        echo(f"  {len(walls)} round(s) of {cfg.fed.clients_per_round or cfg.fed.clients} of {cfg.fed.clients} "
             f"clients: {time.perf_counter() - t1:.1f} s ({', '.join(f'{w:.1f}' for w in walls)} s per round)")
        after_round = meter.now()
        store = sim.store
        took_part = store.took_part()
        on_disk = sum(store.path(c).stat().st_size for c in took_part) if store.on_disk else 0
        held = [store.get(c) for c in (took_part if not store.on_disk else took_part[:1])]
    n, b = cfg.fed.clients, cfg.train.batch_size
    participants = cfg.fed.clients_per_round or n
    in_memory = n if not store.on_disk else participants  # clients whose states the process holds at once, at most
    plan = sim.groups
    rows = plan.train * b
    per_row = plan.bytes_per_row
    if not per_row:  # a fixed group size: count one row's activations as the auto plan does
        per_row = grouping.measure_row(sim.setup, sim.resolved)
    scale = 1 if not store.on_disk else in_memory  # disk: one trained client's state, times the participants
    terms = {
        "base_model": base_model_bytes(sim.model),
        "adapters": scale * tensor_bytes([h.adapters for h in held]),
        "optimizer_state": scale * tensor_bytes([h.opt for h in held]),
        "group_activations": rows * per_row,
    }
    predicted = sum(terms.values())
    measured = max(setup_peak, round_peak) - start
    return {"model": cfg.model.name, "device": str(meter.device), "clients": n,
            "n_labels": len(sim.setup.label_names), "precision": sim.resolved.precision,
            "groups": plan.as_dict(), "rows_per_group_step": rows, "bytes_per_row": per_row,
            "clients_per_round": participants, "client_store": sim.resolved.client_store,
            "clients_in_memory": in_memory, "clients_on_disk": len(took_part) if store.on_disk else 0,
            "disk_bytes": on_disk, "round_wall_s": walls,
            "round_s": sum(walls[1:]) / len(walls[1:]) if len(walls) > 1 else walls[0],
            "terms": terms, "per_client": {"adapter": terms["adapters"] // in_memory, "optimizer_state":
                                           terms["optimizer_state"] // in_memory},
            "predicted": predicted, "predicted_with_safety": predicted + int((SAFETY - 1) * rows * per_row),
            "measured_growth": measured, "start": start, "after_setup": after_setup - start,
            "setup_peak": setup_peak - start, "round_peak": round_peak - start, "after_round": after_round - start,
            "other": measured - predicted}


def report_lines(r: dict[str, Any]) -> list[str]:
    """The account's terms against the measured peak, as `sfedlora bench --memory` prints them."""
    n = r.get("clients_in_memory", r["clients"])
    mb = lambda x: f"{x / 2**20:>9.1f} MiB"  # noqa: E731
    store = r.get("client_store", "memory")
    where = (f"{r['clients']} clients in memory" if store == "memory" else
             f"{r['clients']} clients on disk ({r['clients_on_disk']} files, {r['disk_bytes'] / 2**20:.1f} MiB), "
             f"at most {n} in memory (a round's participants)")
    g, t, pc = r["groups"], r["terms"], r["per_client"]
    free = f", {g['free_bytes'] / 2**30:.1f} GiB free" if g["rule"] == "auto" else ""
    return [
        f"device {r['device']}, precision {r['precision']}; groups of {g['train']} clients per training step "
        f"({g['rule']}{free})",
        f"client store: {store}; {where}",
        f"  base model, held once                          {mb(t['base_model'])}",
        f"  {n} x adapter (mean {pc['adapter'] / 2**10:.1f} KiB){'':<14}{mb(t['adapters'])}",
        f"  {n} x optimizer state (mean {pc['optimizer_state'] / 2**10:.1f} KiB){'':<6}{mb(t['optimizer_state'])}",
        f"  one group's activations ({r['rows_per_group_step']} rows x {r['bytes_per_row'] / 2**20:.2f} MiB)"
        f"{'':<4}{mb(t['group_activations'])}",
        f"  predicted                                      {mb(r['predicted'])}",
        f"measured: peak growth of this process            {mb(r['measured_growth'])}  "
        f"(after set-up {r['after_setup'] / 2**20:.1f} MiB, round peak {r['round_peak'] / 2**20:.1f} MiB)",
        f"measured - predicted (data, tokenizer, runtime, allocator): {r['other'] / 2**20:.1f} MiB",
        f"time per round ({r['clients_per_round']} clients training, rounds after the first): "
        f"{r['round_s']:.2f} s",
    ]


def measure(workload: str, clients: int, rank: int, steps: int, batch: int, seq: int, precision: str,
            extra: Sequence[str] = (), echo: Callable[[str], None] = print, per_round: int = 0, rounds: int = 1,
            examples: int = 0) -> dict[str, Any]:
    """`rounds` rounds of `per_round` of `clients` clients of a bench workload, accounted for (memory_account)."""
    if workload not in WORKLOAD_CONFIGS:
        raise SfedloraError(f"--memory measures a real workload: {' or '.join(WORKLOAD_CONFIGS)}")
    if per_round > clients:
        raise SfedloraError(f"--clients-per-round {per_round} is more than --clients {clients}")
    echo(f"memory {workload}: N={clients} clients, {per_round or clients} per round, r={rank}, {rounds} round(s) of "
         f"K={steps} AdamW steps (state kept), {batch} x {seq} tokens per client step")
    overrides = [*memory_overrides(clients, rank, steps, batch, seq, per_round, rounds, examples),
                 f"model.precision={precision}", *extra]
    return memory_account(workload_config(workload), overrides, echo=echo)

