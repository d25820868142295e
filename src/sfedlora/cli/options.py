"""What every command shares: the one printer, options generated from a dataclass's fields (their defaults, help
and choices, as config.schema.opt states them), and items split into a config name and key=value overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def say(line: str) -> None:
    """The commands' one printer: a line, flushed at once (progress shows as it happens, also into a file)."""
    print(line, flush=True)


def split_items(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] key=value ...` as a command takes them: the config's file or name (None: the defaults), then the
    overrides."""
    rest = list(items)
    return (rest.pop(0) if rest and "=" not in rest[0] else None), rest


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def add_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One --option per field of the dataclass `cls` (but those in `skip`), named as the field with dashes; its
    default, type, help and choices are the field's."""
    for f in fields(cls):
        if f.name in skip:
            continue
        default, meta = _default(f), f.metadata
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{meta.get('help', '')} (default: "
                                  f"{shown})".lstrip()}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif isinstance(default, list):
            kwargs.update(nargs="+", type=type(default[0]) if default else str, metavar="V")
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        if meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def from_options(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """The dataclass `cls` from the options add_options made (and `given` values for the fields it skipped)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(args, n) for n in names if n not in given and hasattr(args, n)}, **given)
