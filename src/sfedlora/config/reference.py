"""docs/configuration.md, generated from the schema: every key, its default and its help text. A test fails
when the file in docs/ differs from what this writes (`sfedlora config --reference > docs/configuration.md`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from sfedlora.config.load import CONFIG_DIR, checks
from sfedlora.config.schema import RunConfig

INTRO = """# Configuration reference

<!-- Generated from src/sfedlora/config/schema.py by `sfedlora config --reference`; do not edit by hand. -->

A run is configured by these keys. Their defaults are the embedded default run (SFed-LoRA on MiniLM-L6 x
BBC News topics, 4 Dirichlet clients): `sfedlora run` with no config runs exactly them. A YAML file, or a built-in
preset, sets some keys by section, and any key can be overridden on the command line as `section.key=value`
(values are parsed as YAML: `lora.targets=[query,key]`). Unknown keys, wrong types and out-of-range values
are refused with one message naming the key. `sfedlora config [CONFIG] [key=value ...]` prints the
configuration a run would use.

Built-in presets (in `src/sfedlora/configs/`, each stating only what it changes): {presets}.
"""


def _value(v: Any) -> str:
    if v is None:
        return "`null`"
    return "`" + yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def reference() -> str:
    """The configuration reference as markdown."""
    defaults = RunConfig()
    presets = ", ".join(f"`{p.stem}`" for p in sorted(CONFIG_DIR.glob("*.yaml")))
    lines = [INTRO.format(presets=presets), "| key | default | meaning |", "|---|---|---|"]
    for key, f in checks().items():
        obj: Any = defaults
        for part in key.split("."):
            obj = getattr(obj, part)
        allowed = f.metadata.get("choices")
        extra = ""
        if f.metadata.get("check") == "positive":
            extra = " (> 0)"
        elif f.metadata.get("check") == "non_negative":
            extra = " (>= 0)"
        help_text = f.metadata.get("help", "") + extra
        if allowed is not None and "`" not in help_text:
            help_text += "; one of " + ", ".join(_value(a) for a in allowed)
        lines.append(f"| `{key}` | {_value(obj)} | {help_text} |")
    return "\n".join(lines) + "\n"


__all__ = ["reference", "dataclasses"]
