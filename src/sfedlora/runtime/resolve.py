"""What a run's `auto` settings and per-client values become: device, precision, scaling rule, init,
per-client ranks and gammas; and the typed description of a run that holds them (Resolved)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sfedlora.config import RunConfig
from sfedlora.core.aggregate import partition_n
from sfedlora.core.scaling import scaling
from sfedlora.core.server_opt import server_lr
from sfedlora.errors import SfedloraError
from sfedlora.methods import FederatedMethod, get_method, names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SfedloraError("model.device=cuda but no CUDA device is available")
    return torch.device(name)


def cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("" where it cannot be read). The one place
    that reads the machine: tests replace it to cover both kinds of CPU on whichever CI gets."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: CPUs where bf16 matmuls are faster than fp32. Elsewhere (e.g. AVX2-only AMD
    EPYC) torch's bf16 CPU matmul is emulated: measured 0.2 GFLOP/s against 63 GFLOP/s in fp32."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where it is fast (CUDA with bf16, or a CPU with AVX512-BF16 / AMX), else fp32."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn("model.precision=bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated "
                          "and can be hundreds of times slower than fp32 here; precision=auto picks fp32",
                          stacklevel=2)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@dataclass
class GroupPlan:
    """The group sizes of a run and where they came from; recorded in config.yaml (resolved.groups)."""

    train: int  # clients per batched training step
    eval: int  # clients per batched evaluation pass
    rule: str  # auto | fixed | all
    cap: int = 0  # auto: the largest G whose activations fit the budget
    row_tokens: int = 0  # auto: tokens of the worst-case (longest) training row
    bytes_per_row: int = 0  # auto: activation bytes one training row saves for backward
    free_bytes: int = 0  # auto: memory free on the device when the plan was made
    budget_bytes: int = 0  # auto: the share of it the groups may use
    decode: int = 0  # clients per greedy-decoding pass (math accuracy, samples); 0: eval (runs before it)
    timed: dict[str, Any] = field(default_factory=dict)  # auto: rule_g, seconds_per_token by G, timing, measured_at

    @property
    def decoding(self) -> int:
        return self.decode or self.eval

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Resolved:
    """The resolved, typed description of a run: what its `auto` settings became and what set-up found.
    Built once (runtime.setup for the in-process runner and a Flower node; a Flower server fills the set-up
    fields from its nodes' registrations), written once to config.yaml's `resolved` section, read back by
    --resume and export (from_record)."""

    # the method's choices (resolve)
    scaling: str
    init: str
    n_averaged: int  # clients per round
    ranks: list[int]  # per client
    gammas: list[float]  # per client: gamma_i = scaling(rule, alpha, r_i, N_i)
    n_scaling: list[float]  # per client: the N_i in its gamma (lora.scaling_n)
    scaling_n: str = "participants"
    client_store: str = "memory"  # memory | disk (simulation.clientstore)
    server_lr: float | None = None  # fed.server_optimizer's eta (fed.server_lr or its default); None: no optimizer
    dp: dict[str, float] | None = None  # server-side DP: clipping norm C and noise multiplier z
    # what set-up found
    task: str = ""
    label_names: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # adapted modules
    model: str = ""  # model.name as configured
    model_path: str = ""  # where it was loaded from (a hub id, a local or converted folder)
    revision: str | None = None  # the hub commit, or the offline package's version
    device: str = ""
    precision: str = ""  # fp32 | bf16: what the frozen base ran in
    sizes: list[dict[str, int]] = field(default_factory=list)  # per client: train / val / test examples
    data_fingerprint: str = ""  # a hash of the clients' examples (runtime.setup.fingerprint)
    data_counts: dict[str, int] = field(default_factory=dict)  # records read, skipped, cut, left out, used
    groups: GroupPlan | None = None  # the in-process runner's group sizes
    attention: Any = field(default_factory=dict)  # model.attention resolved (runtime.attention); Flower: per node
    engine: str = "simulation"  # simulation | flower
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific (Flower: run key, DP settings)

    @property
    def gamma(self) -> float:
        """The single gamma of a run with equal ranks (the first client's otherwise)."""
        return self.gammas[0]

    @property
    def heterogeneous(self) -> bool:
        return len(set(self.ranks)) > 1

    def as_record(self) -> dict[str, Any]:
        """config.yaml's `resolved` section (summary.json carries it too)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("groups", "extra")}
        out["gamma"] = self.gamma
        out["groups"] = None if self.groups is None else self.groups.as_dict()
        return {**out, **self.extra}

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Resolved:
        known = {f.name for f in fields(cls)} - {"groups", "extra"}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs.setdefault("n_scaling", [float(raw.get("n_averaged", 1))] * len(raw.get("ranks", [])))  # older runs
        groups = raw.get("groups")
        extra = {k: v for k, v in raw.items() if k not in known | {"groups", "gamma"}}
        return cls(**kwargs, groups=GroupPlan(**groups) if groups else None, extra=extra)


RESUME_FIELDS = ("task", "label_names", "targets", "model_path", "revision", "precision", "sizes", "data_fingerprint",
                 "ranks", "gammas", "n_scaling")


def resume_mismatch(recorded: Resolved, now: Resolved) -> list[str]:
    """What a resumed run would do differently from the run it continues (empty: nothing). Fields the
    recorded run lacks (older versions) are not compared."""
    out = []
    for name in RESUME_FIELDS:
        was, is_ = getattr(recorded, name), getattr(now, name)
        if was in ("", None, []) and name in ("data_fingerprint", "model_path", "revision"):
            continue
        if was != is_:
            show = (lambda v: f"{str(v)[:60]}{'...' if len(str(v)) > 60 else ''}")
            out.append(f"{name} was {show(was)}, is now {show(is_)}")
    return out


def assign_ranks(cfg: RunConfig, n_train: list[int]) -> list[int]:
    """Per-client ranks: lora.ranks as given; lora.rank_set by rule (cycle, or by_size: clients sorted by
    training-set size split into len(rank_set) near-equal groups, larger data -> larger rank); else lora.rank."""
    n = len(n_train)
    if cfg.lora.ranks is not None:
        return list(cfg.lora.ranks)
    if cfg.lora.rank_set is not None:
        rs = list(cfg.lora.rank_set)
        if cfg.lora.rank_rule == "cycle":
            return [rs[c % len(rs)] for c in range(n)]
        order = sorted(range(n), key=lambda c: (n_train[c], c))
        ranks = [0] * n
        for pos, c in enumerate(order):
            ranks[c] = sorted(rs)[pos * len(rs) // n]
        return ranks
    return [cfg.lora.rank] * n


def check(cfg: RunConfig) -> FederatedMethod:
    """Everything about a config that needs the methods and no data: the method exists, and its init,
    ranks and scaling choices fit it. Returns the method. (config.validate checks the config alone.)"""
    method = get_method(cfg.fed.method)
    resolve(cfg, method, [1] * cfg.fed.clients)
    return method


def resolve(cfg: RunConfig, method: FederatedMethod, n_train: list[int]) -> Resolved:
    rule = method.default_scaling if cfg.lora.scaling == "auto" else cfg.lora.scaling
    init = method.default_init if cfg.lora.init == "auto" else cfg.lora.init
    if method.requires_shared_init and init != "shared":
        raise SfedloraError(f"{method.name} {method.shared_init_reason}: set lora.init=shared (or auto)")
    if cfg.model.quantization != "none" and method.merges_into_base:
        raise SfedloraError(f"{method.name} merges every round's update into the base weights, which a quantised "
                            "base (model.quantization) cannot take: use model.quantization=none")
    ranks = assign_ranks(cfg, n_train)
    if len(set(ranks)) > 1 and not method.heterogeneous_ranks:
        raise SfedloraError(f"{method.name} needs equal ranks on all clients (got {ranks}); for heterogeneous "
                            f"ranks use one of {', '.join(names(lambda m: m.heterogeneous_ranks))}")
    n = cfg.fed.clients_per_round or cfg.fed.clients
    if cfg.fed.server_optimizer != "none":
        if method.no_server_optimizer:
            takes = ", ".join(names(lambda m: not m.no_server_optimizer))
            raise SfedloraError(f"{method.name} {method.no_server_optimizer}, so fed.server_optimizer (a step on a "
                                f"weighted mean of factors of one shape) is not defined for it: use it with one of "
                                f"{takes}, or fed.server_optimizer=none")
        if len(set(ranks)) > 1:
            raise SfedloraError(f"fed.server_optimizer needs equal ranks on all clients (got {ranks}): with "
                                "heterogeneous ranks a factor's rows are averaged over different clients")
        if rule == "adaptive":
            raise SfedloraError("fed.server_optimizer and lora.scaling=adaptive do not go together: N_eff measures how "
                                "plain averaging shrinks A, and a server optimizer's step is not an average")
    elif cfg.fed.server_lr is not None:
        raise SfedloraError("fed.server_lr is set but fed.server_optimizer is none: choose a server optimizer "
                            "(avgm, adagrad, yogi, adam) or leave fed.server_lr null")
    if cfg.fed.dp_clipping_norm > 0:
        if not method.dp_compatible:
            raise SfedloraError(f"server-side DP (fed.dp_clipping_norm) clips each upload against the previous "
                                f"aggregate, which needs the same factors every round: use it with one of "
                                f"{', '.join(names(lambda m: m.dp_compatible))}, not {method.name}")
        if len(set(ranks)) > 1:
            raise SfedloraError(f"server-side DP (fed.dp_clipping_norm) needs equal ranks on all clients (got {ranks})")
        if init != "shared":
            raise SfedloraError("server-side DP (fed.dp_clipping_norm) clips updates against the previous aggregate, "
                                "so round 1 needs a common starting point: set lora.init=shared")
        if rule == "adaptive":
            raise SfedloraError("server-side DP (fed.dp_clipping_norm) and lora.scaling=adaptive do not go together: "
                                "the adaptive rule measures N_eff on the unclipped uploads and sends every client a "
                                "gamma from them, outside the privacy mechanism")
    elif cfg.fed.dp_noise_multiplier > 0:
        raise SfedloraError("fed.dp_noise_multiplier needs fed.dp_clipping_norm > 0 (the noise's scale is z C / n)")
    if rule == "adaptive":
        if not method.adaptive_scaling:
            raise SfedloraError(f"lora.scaling=adaptive measures how averaging shrinks A while each client keeps its "
                                f"B: use it with {', '.join(names(lambda m: m.adaptive_scaling))}, not {method.name}")
        if len(set(ranks)) > 1:
            raise SfedloraError(f"lora.scaling=adaptive needs equal ranks on all clients (got {ranks})")
    if rule == "adaptive":  # N_eff = 1 until the first aggregation measures it (core.adaptive)
        n_i = [1.0] * len(ranks)
    elif cfg.lora.scaling_n == "partition":
        if not method.rank_partitioned:
            raise SfedloraError("lora.scaling_n=partition counts the clients that average each rank partition: use "
                                f"it with a method whose aggregation is rank-partitioned "
                                f"({', '.join(names(lambda m: m.rank_partitioned))}), not {method.name}")
        n_i = partition_n(ranks, n)
    else:
        n_i = [float(n)] * len(ranks)
    gammas = [scaling(rule, cfg.lora.alpha, r, ni, cfg.lora.scaling_a, cfg.lora.scaling_b)
              for r, ni in zip(ranks, n_i, strict=True)]
    return Resolved(scaling=rule, init=init, n_averaged=n, ranks=ranks, gammas=gammas, n_scaling=n_i,
                    scaling_n=cfg.lora.scaling_n, client_store=client_store(cfg, method),
                    server_lr=None if cfg.fed.server_optimizer == "none" else server_lr(cfg.fed.server_optimizer,
                                                                                         cfg.fed.server_lr),
                    dp=None if cfg.fed.dp_clipping_norm <= 0 else {
                        "clipping_norm": cfg.fed.dp_clipping_norm, "noise_multiplier": cfg.fed.dp_noise_multiplier})


DISK_FROM = 1000  # fed.client_store=auto: clients from which the in-process runner keeps them on disk


def client_store(cfg: RunConfig, method: FederatedMethod) -> str:
    """fed.client_store resolved: `auto` is disk from DISK_FROM clients, except for a method that re-draws every
    client's adapters each round (FLoRA), which would rewrite every client's file every round."""
    store = cfg.fed.client_store
    if store == "disk" and method.merges_into_base:
        raise SfedloraError(f"{method.name} re-draws every client's adapters each round, so fed.client_store=disk "
                            "would rewrite every client's file every round: use fed.client_store=memory")
    if store == "auto":
        return "disk" if cfg.fed.clients >= DISK_FROM and not method.merges_into_base else "memory"
    return store
