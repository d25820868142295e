"""Loading a run configuration: YAML, dotted `key=value` overrides (`lora.rank=64 fed.method=fedit`), and one
validation pass with one clear message per problem. Built-in presets live in the package's configs/ and
state only what they change from the defaults (sfedlora.config.schema)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Union

import yaml

from sfedlora.config.schema import TRACKERS, RunConfig
from sfedlora.errors import SfedloraError


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # the base class says so, as a YAML error
                break
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {line}): which one is meant?",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """Parse YAML as yaml.safe_load does, except that a key named twice in one mapping is an error."""
    return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader subclass)


CONFIG_DIR = Path(__file__).parent.parent / "configs"
DEFAULT = "default"  # the name of the defaults themselves, as a built-in config


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


def checks() -> dict[str, dataclasses.Field]:
    """Every config field by its dotted key."""
    out: dict[str, dataclasses.Field] = {}
    for section in dataclasses.fields(RunConfig):
        hint = typing.get_type_hints(RunConfig)[section.name]
        if dataclasses.is_dataclass(hint):
            out.update({f"{section.name}.{f.name}": f for f in dataclasses.fields(hint)})
        else:
            out[section.name] = section
    return out


def not_results() -> list[str]:
    """The dotted keys whose value does not change what a run computes (their schema option says result=False):
    what reports group runs over."""
    return [key for key, f in checks().items() if not f.metadata.get("result", True)]


def written_only() -> list[str]:
    """The dotted keys that only decide what a run writes (their schema option says written=True: trackers,
    checkpoints, kept adapters, samples): what a run's identity (runtime.rundir.config_hash) leaves out."""
    return [key for key, f in checks().items() if f.metadata.get("written", False)]


def validate(cfg: RunConfig) -> RunConfig:
    for key, f in checks().items():
        value, meta = _get(cfg, key), f.metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            shown = ", ".join("null" if a is None else str(a) for a in meta["choices"])
            raise SfedloraError(f"{key} must be one of {shown}; got {value!r}")
        finite = not isinstance(value, float) or math.isfinite(value)
        if meta.get("check") == "positive" and (not value > 0 or not finite):
            raise SfedloraError(f"{meta.get('label') or key} ({key}) must be > 0, got {value!r}")
        if meta.get("check") == "non_negative" and value < 0:
            raise SfedloraError(f"{key} must be >= 0, got {value!r}")
        if meta.get("check") == "fraction" and not 0 <= value < 1:
            raise SfedloraError(f"{key} must be in [0, 1), got {value!r}")
    if cfg.fed.clients_per_round > cfg.fed.clients:
        raise SfedloraError(f"fed.clients_per_round ({cfg.fed.clients_per_round}) exceeds fed.clients "
                            f"({cfg.fed.clients})")
    n_round = cfg.fed.clients_per_round or cfg.fed.clients
    if cfg.fed.min_clients > n_round:
        raise SfedloraError(f"fed.min_clients ({cfg.fed.min_clients}) exceeds the clients a round has ({n_round}: "
                            "fed.clients_per_round, else fed.clients): no round could ever go ahead")
    if cfg.data.val_fraction <= 0:
        raise SfedloraError(f"data.val_fraction must be > 0, got {cfg.data.val_fraction}: the best round, export "
                            "--best and the report's main column are chosen on each client's validation split, and "
                            "with none every round would tie on NaN and the untrained round 0 would be chosen")
    if cfg.data.test_fraction <= 0:
        raise SfedloraError(f"data.test_fraction must be > 0, got {cfg.data.test_fraction}: results are reported on "
                            "each client's test split, never on the validation split they were chosen on")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise SfedloraError("data.val_fraction + data.test_fraction must be < 1")
    if len(cfg.train.betas) != 2 or not all(0 <= b < 1 for b in cfg.train.betas):
        raise SfedloraError(f"train.betas must be two numbers in [0, 1), got {cfg.train.betas}")
    g = cfg.train.group_size
    if (isinstance(g, str) and g != "auto") or (isinstance(g, int) and g < 0):
        raise SfedloraError(f"train.group_size must be auto, 0 (all clients) or a number of clients >= 1, got {g!r}")
    if not 0 < cfg.train.group_memory <= 1:
        raise SfedloraError(f"train.group_memory must be in (0, 1], got {cfg.train.group_memory}")
    if cfg.fed.server_lr is not None and not (cfg.fed.server_lr > 0 and math.isfinite(cfg.fed.server_lr)):
        raise SfedloraError(f"fed.server_lr must be > 0 or null (the optimizer's default), got {cfg.fed.server_lr}")
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
    unknown = [t for t in cfg.tracking if t not in TRACKERS]
    if unknown or len(set(cfg.tracking)) != len(cfg.tracking):
        raise SfedloraError(f"tracking must list distinct trackers of {', '.join(TRACKERS)}; got {cfg.tracking}")
    if isinstance(cfg.lora.targets, list) and not cfg.lora.targets:
        raise SfedloraError("lora.targets must name at least one module")
    return cfg


def builtin_configs() -> list[str]:
    """The built-in config names: `default` (the schema's defaults) and the presets in configs/."""
    return sorted([DEFAULT, *(p.stem for p in CONFIG_DIR.glob("*.yaml"))])


def config_path(name: str | None) -> Path | None:
    """The YAML file a config name stands for: a file, or a built-in preset; None for the defaults
    (no name, or `default`)."""
    if name is None or name == DEFAULT:
        return None
    path = Path(name)
    if path.is_file() or path.suffix in (".yaml", ".yml"):  # a folder that happens to share a name is not one
        return path
    if (CONFIG_DIR / f"{name}.yaml").exists():
        return CONFIG_DIR / f"{name}.yaml"
    raise SfedloraError(f"no config file {name!r} and no built-in config of that name "
                        f"(built-in: {', '.join(builtin_configs())})")


def same_value(value: Any, text: str) -> bool:
    """Whether a config value equals a value typed on the command line (1e-3 equals 0.001, false equals False)."""
    if parse_value(text) == value:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return False


def parse_value(text: str) -> Any:
    """A value typed on the command line, read as YAML (64, 0.001, true, [q, v]); text YAML cannot read stays text."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SfedloraError(f"override {item!r} is not of the form key=value (e.g. lora.rank=64)")
    key, _, text = item.partition("=")
    return [p for p in key.strip().split(".") if p], parse_value(text)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (a path or a built-in name; None: the defaults), apply dotted overrides, validate."""
    if isinstance(path, str):
        path = config_path(path)
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = read_yaml(path.read_text())
        except OSError as exc:
            raise SfedloraError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SfedloraError(f"config {path} is not valid YAML: {exc}") from None
        if loaded is None or loaded == {}:
            warnings.warn(f"config {path} is empty: the run uses the defaults (sfedlora config shows them)",
                          stacklevel=2)
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


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config as to_dict gives it) as one level of dotted keys (`lora.rank`), leaves as
    they are."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out

