"""How many clients share one batched step (the group size G): the fastest per token of a few sizes timed,
within the memory that is free.

A group of G clients costs G times one client's activations (the batched step concatenates their rows);
the base model and every client's adapters and optimizer state are paid once whatever G is. The memory
cap is the largest G whose activations fit a share of the memory free once the model and all clients'
states are in place:

    bytes_per_row = activation bytes one training row saves for backward, measured by a probe:
                    one forward of a worst-case batch (the longest training example, batch_size times)
                    with autograd's saved-tensor hooks counting every saved tensor that is not a parameter
    rows_fit      = budget // (SAFETY * bytes_per_row)       budget = train.group_memory * free memory
    cap           = clamp(rows_fit // train.batch_size, 1, N)

Within the cap, a larger group only pays where one client's batch leaves the device idle. A GPU is idle
at a few hundred tokens, so on CUDA the rule's G is the cap. A 2-core AVX2 CPU is not: its GEMMs run near the
ceiling at a few hundred tokens, and bigger groups only add cache and page traffic. Measured there (training
100 MiniLM clients for one step of 8 x 64 tokens each, glibc's default malloc): 15.0 s at G = 1, 16.0 at 4,
16.1 at 10, 18.1 at 25 and 27.5 at 100; SmolLM2 at 2 x 128 tokens per client: 249 tokens/s at G = 1, 264 at
G = 2. So on a CPU the rule's G is the smallest group whose step has CPU_STEP_TOKENS tokens (worst-case
length), within the cap.

That rule was tuned on one kind of machine (AVX2, fp32); where GEMMs are much faster (AMX, bf16, GPUs) the
work around them decides, and another G may pay. So `train.group_size: auto` also times one training step
(the worst-case row, the widest adapters) for a few group sizes within the cap (`candidates`: the rule's G
and powers of two, on a CPU up to MAX_PROBE_TOKENS tokens a step; REPEATS rounds timing them in turn), and
takes the fastest per token if it beats
the rule's G by more than runtime.attention's MARGIN, else the rule's G: a near-tie is decided the same way
on every run. The timings are kept per situation (runtime.timings), so the runs of a sweep measure once; G,
its timings and their rule are recorded in config.yaml (resolved.groups), and a fixed train.group_size
overrides it.
Evaluation scores as many rows per pass as the chosen training group, within its own memory cap (a row
without a graph costs less than the training row counted here, so that cap errs on the safe side). Greedy
decoding (math accuracy, samples) takes every client whose decoding rows fit that cap: a decoding step computes
one token per row, so on a CPU as on a GPU its time is a pass over the weights and per-step overhead whatever
the rows, and more clients per pass means fewer passes.

SAFETY covers what the count does not see: backward's transient gradients of activations, one
cross-entropy chunk's vocabulary-sized logits, and the allocator's fragmentation. Measured with 100
MiniLM clients in one group (800 rows): peak growth 1.17x the count with glibc's default malloc and
1.9x with sfedlora's malloc settings, which keep freed memory in the heap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sfedlora.client.local import fresh_state
from sfedlora.client.probe import probe_situation, probe_step
from sfedlora.runtime import timings
from sfedlora.runtime.attention import REPEATS, choose
from sfedlora.runtime.resolve import GroupPlan

SAFETY = 2.0
CPU_STEP_TOKENS = 512
MAX_PROBE_TOKENS = 1024  # CPU: the largest step timed when choosing G


def memory_caps(bytes_per_row: int, budget: int, train_rows: int, eval_rows: int, n_clients: int,
                safety: float = SAFETY, decode_rows: int = 0) -> tuple[int, int, int]:
    """(training cap, evaluation cap, decoding cap): clients whose rows fit `budget`, at least 1 and at most
    n_clients; `decode_rows`: one client's rows in a decoding pass (0: eval_rows)."""
    rows_fit = budget // max(1, math.ceil(safety * bytes_per_row))
    clamp = lambda g: max(1, min(n_clients, g))
    return clamp(rows_fit // train_rows), clamp(rows_fit // eval_rows), clamp(rows_fit // (decode_rows or eval_rows))


def busy_group(device_type: str, row_tokens: int, train_rows: int, cap: int) -> int:
    """Clients per training step: the cap on CUDA; on a CPU the fewest clients whose step has at least
    CPU_STEP_TOKENS tokens, within the cap."""
    if device_type == "cuda":
        return cap
    return max(1, min(cap, -(-CPU_STEP_TOKENS // max(1, row_tokens * train_rows))))


def candidates(device_type: str, rule_g: int, cap: int, tokens_per_client: int) -> list[int]:
    """The group sizes timed: the rule's G with, on CUDA, half and a quarter of the cap, on a CPU the powers of
    two within the cap whose step has at most MAX_PROBE_TOKENS tokens."""
    if device_type == "cuda":
        sizes = {max(1, cap // 2), max(1, cap // 4)}
    else:
        sizes = {g for g in (1, 2, 4, 8, 16, 32, 64) if g <= cap and g * tokens_per_client <= MAX_PROBE_TOKENS}
    return sorted(sizes | {rule_g})


def time_groups(step_for: Callable[[int], Callable[..., object]], sizes: list[int],
                repeats: int = REPEATS) -> dict[int, float]:
    """Seconds of one training step of G clients for each G in `sizes`: one warm-up at the largest (the allocator
    then holds what every size needs), then `repeats` rounds timing every size in turn, the fastest of each kept
    (interleaved, as runtime.attention.measure: a passing load slows every size alike); the RNG streams are left
    as they were."""
    return timings.time_in_turn(step_for, sizes, [max(sizes)], repeats)


def measured_group(rule_g: int, sizes: list[int], tokens_per_client: int,
                   step_for: Callable[[int], Callable[..., object]],
                   key: dict[str, Any] | None) -> tuple[int, dict[str, float], str, str]:
    """(G, seconds per token by G, "measured" | "cached", when measured): the fastest per token of `sizes` if it
    beats the rule's G by more than the margin, else the rule's G; timings read from, or kept in, the cache
    under `key` (runtime.timings; None: not kept)."""
    key = None if key is None else {**key, "what": "group size", "sizes": sizes}

    def measure() -> dict[str, float]:
        seconds = time_groups(step_for, sizes)
        return {str(g): seconds[g] / (g * tokens_per_client) for g in sizes}
    per_token, rule, when = timings.measured(key, measure)
    return int(choose(per_token, default=str(rule_g))), per_token, rule, when or ""


def eval_group(g_train: int, train_rows: int, eval_rows: int, eval_cap: int) -> int:
    """Clients per evaluation pass: about as many rows as a training step of g_train clients, within the cap."""
    return max(1, min(eval_cap, -(-g_train * train_rows // eval_rows)))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def host_free_bytes() -> int:
    """Memory this process can still take on the host: MemAvailable, lowered by a cgroup limit if any."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:  # not Linux
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except ImportError:
            free = 4 << 30  # an assumption, stated in the plan's free_bytes
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < 1 << 60:
            free = min(free, max(0, limit - usage))
    return free


def free_bytes(device: torch.device) -> int:
    """Memory free for activations on `device` (CUDA: the driver's free memory plus torch's cached blocks)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return host_free_bytes()


def saved_activation_bytes(model: torch.nn.Module, run_forward: Any) -> int:
    """Bytes of the tensors autograd saves for backward while `run_forward()` runs, parameters and
    buffers excluded, each storage counted once. The graph is dropped unused; RNG state is restored."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_forward()
    del out
    return sum(seen.values())


def bytes_per_row(model: torch.nn.Module, step: Callable[[bool], object], batch_size: int) -> int:
    """Activation bytes one training row saves for backward, worst case: the forward of one client's probe step
    (client.probe.probe_step: a batch of the longest training example, the widest client's adapters, A, B and head
    all trained as training sets them per round, the blocks recomputed where train.gradient_checkpointing is on, so
    that what they save is measured), divided by its `batch_size` rows."""
    saved = saved_activation_bytes(model, lambda: step(False))
    return -(-saved // batch_size)


def plan(group_size: int | str, group_memory: float, batch_size: int, eval_batch_size: int, n_clients: int,
         device: torch.device, measure: Any, row_tokens: int, decode_rows: int = 0,
         step_for: Callable[[int], Callable[..., object]] | None = None,
         key: dict[str, Any] | None = None) -> GroupPlan:
    """G for training and evaluation: as configured (a number; 0 = all), or (auto) the fastest per token of a
    few sizes timed with `step_for(G)` (a training step of G clients) within the memory free now that the model
    and every client's state are in place (without `step_for`: the rule's G), and for greedy decoding every
    client that fits. `measure()` returns bytes_per_row (run only for auto); `row_tokens` is the worst-case row's
    length; `decode_rows` one client's rows in a decoding pass (0: eval_batch_size); `key`: the timings' situation
    (runtime.timings)."""
    if isinstance(group_size, int):
        g = min(group_size or n_clients, n_clients)
        return GroupPlan(train=g, eval=g, rule="fixed" if group_size else "all", decode=g)
    per_row = measure()
    free = free_bytes(device)
    budget = int(group_memory * free)
    cap, eval_cap, decode_cap = memory_caps(per_row, budget, batch_size, eval_batch_size, n_clients,
                                            decode_rows=decode_rows)
    g_rule = g_train = busy_group(device.type, row_tokens, batch_size, cap)
    timed: dict[str, Any] = {}
    sizes = candidates(device.type, g_rule, cap, row_tokens * batch_size)
    if step_for is not None and len(sizes) > 1:
        g_train, per_token, how, when = measured_group(g_rule, sizes, row_tokens * batch_size, step_for, key)
        timed = {"rule_g": g_rule, "seconds_per_token": per_token, "timing": how} | (
            {"measured_at": when} if when else {})
    return GroupPlan(train=g_train, eval=eval_group(g_train, batch_size, eval_batch_size, eval_cap), rule="auto",
                     cap=cap, row_tokens=row_tokens, bytes_per_row=per_row, free_bytes=free, budget_bytes=budget,
                     decode=decode_cap, timed=timed)


def plan_run(setup: Any, resolved: Any) -> GroupPlan:
    """The group plan of an in-process run from its set-up (runtime.setup.Setup) and description, made once the
    model and every client's state are in place: the worst-case row is the longest training example, the widest
    client's fresh adapters train it."""
    cfg = setup.cfg
    longest = longest_row(setup)
    step_for = probe_of(setup, resolved, longest)
    return plan(cfg.train.group_size, cfg.train.group_memory, cfg.train.batch_size, cfg.eval.batch_size,
                cfg.fed.clients, setup.device, lambda: bytes_per_row(setup.model, step_for(1), cfg.train.batch_size),
                len(longest["input_ids"]), decode_rows(setup.encoded.values(), cfg.eval.batch_size), step_for,
                probe_situation(setup, longest, max(resolved.ranks)))


def decode_rows(encoded: Any, eval_batch_size: int) -> int:
    """One client's rows in a decoding pass, the largest over clients: its math sample of both splits (decoded
    together) or its sample prompts, at most a batch; 0 where nothing is decoded."""
    most = max((max(sum(len(d) for d in e.decode.values()), len(e.samples)) for e in encoded), default=0)
    return min(most, eval_batch_size)


def longest_row(setup: Any) -> dict[str, Any]:
    return max((ex for e in setup.encoded.values() for ex in e.train), key=lambda e: len(e["input_ids"]))


def probe_of(setup: Any, resolved: Any, longest: dict[str, Any]) -> Callable[[int], Callable[[bool], object]]:
    """This run's probe step for a group of G clients (client.probe.probe_step): its longest training example
    (longest_row, a scan of every client's rows, done once by the caller), its widest client's fresh adapters
    (drawn once here) and gamma."""
    cfg, r = setup.cfg, resolved
    c = max(range(cfg.fed.clients), key=lambda k: r.ranks[k])
    adapters = fresh_state(setup.model, cfg, r.init, c, r.ranks[c], max(r.ranks))
    return lambda g: probe_step(setup.model, setup.tok, setup.task, longest, cfg.train.batch_size, adapters,
                                r.gammas[c], setup.device, cfg.train.gradient_checkpointing, clients=g)


def measure_row(setup: Any, resolved: Any) -> int:
    """bytes_per_row of this run (its longest training example, its widest client's fresh adapters)."""
    return bytes_per_row(setup.model, probe_of(setup, resolved, longest_row(setup))(1), setup.cfg.train.batch_size)
