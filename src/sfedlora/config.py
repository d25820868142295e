"""Typed run configuration: dataclasses that own their defaults, loaded from YAML with dotted overrides
(`lora.rank=64 fed.method=fedit`) and validated once, with one clear message per problem."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from sfedlora.errors import SfedloraError


@dataclass
class ModelConfig:
    name: str = "minilm-l6"  # minilm-l6 | smollm2-135m | tiny-bert | tiny-llama | a hub id | a local path
    precision: str = "auto"  # auto (bf16 where it is fast, else fp32) | fp32 | bf16 (bf16 frozen base, fp32 adapters)
    max_length: int = 128  # tokens per example after truncation
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class LoraConfig:
    rank: int = 8  # every client's rank, unless ranks or rank_set is given
    ranks: list[int] | None = None  # heterogeneous: one rank per client
    rank_set: list[int] | None = None  # heterogeneous: ranks assigned to clients by rank_rule
    rank_rule: str = "cycle"  # cycle (client c gets rank_set[c % len]) | by_size (more data, higher rank)
    alpha: float = 8.0
    scaling: str = "auto"  # auto (the method's own) | lora | rslora | sfed | custom | none
    scaling_n: str = "participants"  # N in sfed/custom under heterogeneous ranks: participants (the paper's: clients
    #   per round, for every rank) | partition (per client, the clients that average its A's rows: hetero.partition_n)
    scaling_a: float = 0.5  # custom: gamma = alpha * N**a / r**b
    scaling_b: float = 0.5
    targets: str | list[str] = "qv"  # qv | all-attention | a list of module-name suffixes
    dropout: float = 0.0
    init: str = "auto"  # auto (the method's own) | shared | independent: how clients draw A
    a_init: str = "kaiming"  # kaiming (PEFT's) | gaussian
    a_init_std: float | None = None  # gaussian std; default 1/sqrt(d_in)


@dataclass
class DataConfig:
    source: str = "multiemo"  # multiemo | vitaminc | natural-instructions | gsm-symbolic | file | hub name
    task: str | None = None  # classification | instruction | math (needed for files and hub names)
    subset: str | None = None  # hub dataset configuration
    split: str = "train"  # hub dataset split
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    prompt_field: str = "prompt"  # the instruction
    input_field: str = "input"  # optional context of the instruction (Alpaca's `input`); absent or empty: none
    response_field: str = "response"
    answer_field: str = "answer"
    category_field: str = "category"
    template: str = "alpaca"  # instruction/math prompt format: alpaca (with ### Input when present) | chat (the
    #                           tokenizer's chat template, for instruct models)
    labels: list[str] | None = None  # keep only these labels, in this order
    max_examples: int = 2000  # records drawn (seeded) before partitioning; 0 = all
    partition: str = "dirichlet"  # iid | dirichlet
    partition_by: str = "label"  # record field the Dirichlet split is over
    dirichlet_alpha: float = 0.5
    min_partition_size: int = 40
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class FedConfig:
    method: str = "sfed-lora"  # fedit | ffa-lora | fedsa-lora | fedsa-rslora | sfed-lora | rolora
    clients: int = 4
    clients_per_round: int = 0  # 0 = all (full participation); N in gamma is this number
    rounds: int = 10
    local_steps: int = 10
    weighting: str = "samples"  # samples | uniform
    min_clients: int = 1  # a round needs this many clients with finite updates, or the run stops


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 5e-4
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    batch_size: int = 8  # examples per client per local step
    grad_clip: float | None = 1.0  # per-client global-norm clip; null = off
    optimizer_state: str = "reset"  # reset (fresh each round) | keep (carried across rounds per client)
    group_size: int | str = "auto"  # clients per batched step: auto (from free memory) | 0 = all | G
    group_memory: float = 0.5  # auto: share of the free memory the groups' activations may use


@dataclass
class EvalConfig:
    every: int = 1  # evaluate every E rounds (and always the last)
    initial: bool = True  # also evaluate before training (round 0: the base model, B = 0)
    batch_size: int = 16  # per client
    max_examples: int = 0  # cap per client and split; 0 = all
    global_model: bool = True  # also evaluate the global model on the pooled test split
    generate_examples: int = 16  # math: a seeded sample of this many examples per client and split is decoded
    #                              greedily for accuracy, the same every round; 0 = all
    max_new_tokens: int = 160


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    name: str = ""  # a label for the run folder
    checkpoint_every: int = 1  # write checkpoint.pt every C rounds (and at the end); 0 = never


CHOICES = {
    "model.precision": ("fp32", "bf16", "auto"),
    "model.device": ("auto", "cpu", "cuda"),
    "lora.scaling": ("auto", "lora", "rslora", "sfed", "custom", "none"),
    "lora.init": ("auto", "shared", "independent"),
    "lora.scaling_n": ("participants", "partition"),
    "lora.a_init": ("kaiming", "gaussian"),
    "lora.rank_rule": ("cycle", "by_size"),
    "data.task": (None, "classification", "instruction", "math"),
    "data.partition": ("iid", "dirichlet"),
    "data.template": ("alpaca", "chat"),
    "fed.weighting": ("samples", "uniform"),
    "train.optimizer": ("sgd", "adamw"),
    "train.optimizer_state": ("reset", "keep"),
}
POSITIVE = {"lora.rank": "LoRA rank", "lora.alpha": "LoRA alpha", "fed.clients": "number of clients N",
            "fed.rounds": "rounds", "fed.local_steps": "local steps", "train.lr": "learning rate",
            "train.batch_size": "batch size", "model.max_length": "max_length", "eval.every": "eval.every",
            "eval.batch_size": "eval batch size", "data.dirichlet_alpha": "Dirichlet alpha",
            "train.eps": "AdamW eps"}
NON_NEGATIVE = ("checkpoint_every", "fed.min_clients",
                "lora.dropout", "train.momentum", "train.weight_decay", "data.max_examples",
                "data.min_partition_size", "fed.clients_per_round", "eval.max_examples",
                "eval.generate_examples", "data.val_fraction", "data.test_fraction")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting ints to floats where a float is expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except SfedloraError as exc:
                errors.append(str(exc))
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint))
        raise SfedloraError(f"{where} must be {names.replace('NoneType', 'null')}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, where)
    name = getattr(hint, "__name__", str(hint))
    raise SfedloraError(f"{where} must be {name}, got {value!r}")


def _build(cls: Any, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise SfedloraError(f"unknown config key {prefix}{unknown[0]}; known keys here: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def _get(cfg: RunConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: RunConfig) -> RunConfig:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise SfedloraError(f"{key} must be one of {shown}; got {value!r}")
    for key, label in POSITIVE.items():
        value = _get(cfg, key)
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise SfedloraError(f"{label} ({key}) must be > 0, got {value!r}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise SfedloraError(f"{key} must be >= 0, got {_get(cfg, key)!r}")
    if cfg.fed.clients_per_round > cfg.fed.clients:
        raise SfedloraError(f"fed.clients_per_round ({cfg.fed.clients_per_round}) exceeds fed.clients "
                            f"({cfg.fed.clients})")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise SfedloraError("data.val_fraction + data.test_fraction must be < 1")
    if len(cfg.train.betas) != 2 or not all(0 <= b < 1 for b in cfg.train.betas):
        raise SfedloraError(f"train.betas must be two numbers in [0, 1), got {cfg.train.betas}")
    g = cfg.train.group_size
    if (isinstance(g, str) and g != "auto") or (isinstance(g, int) and g < 0):
        raise SfedloraError(f"train.group_size must be auto, 0 (all clients) or a number of clients >= 1, got {g!r}")
    if not 0 < cfg.train.group_memory <= 1:
        raise SfedloraError(f"train.group_memory must be in (0, 1], got {cfg.train.group_memory}")
    if cfg.train.grad_clip is not None and cfg.train.grad_clip <= 0:
        raise SfedloraError(f"train.grad_clip must be > 0 or null, got {cfg.train.grad_clip}")
    if cfg.lora.ranks is not None and cfg.lora.rank_set is not None:
        raise SfedloraError("give lora.ranks (one per client) or lora.rank_set (assigned by lora.rank_rule), not both")
    if cfg.lora.ranks is not None and len(cfg.lora.ranks) != cfg.fed.clients:
        raise SfedloraError(f"lora.ranks lists {len(cfg.lora.ranks)} ranks for {cfg.fed.clients} clients (fed.clients)")
    for key in ("ranks", "rank_set"):
        values = getattr(cfg.lora, key)
        if values is not None and (not values or any(r < 1 for r in values)):
            raise SfedloraError(f"lora.{key} must be a non-empty list of ranks >= 1, got {values}")
    if isinstance(cfg.lora.targets, list) and not cfg.lora.targets:
        raise SfedloraError("lora.targets must name at least one module")
    return cfg


CONFIG_DIR = Path(__file__).parent / "configs"


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))



def config_path(name: str | None) -> Path:
    if name is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):  # a folder that happens to share a name is not one
        return path
    if (CONFIG_DIR / f"{name}.yaml").exists():
        return CONFIG_DIR / f"{name}.yaml"
    raise SfedloraError(f"no config file {name!r} and no built-in config of that name "
                        f"(built-in: {', '.join(builtin_configs())})")



def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SfedloraError(f"override {item!r} is not of the form key=value (e.g. lora.rank=64)")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return [p for p in key.strip().split(".") if p], value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise SfedloraError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SfedloraError(f"config {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SfedloraError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        keys, value = parse_override(item)
        if not keys:
            raise SfedloraError(f"override {item!r} has an empty key")
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise SfedloraError(f"override {item!r}: {k} is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return validate(_build(RunConfig, raw, ""))


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a nested mapping (e.g. a run folder's config.yaml)."""
    return validate(_build(RunConfig, raw, ""))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
