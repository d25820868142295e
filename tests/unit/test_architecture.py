"""The layout shows the architecture (docs/architecture.md), and stays that way: no module imports a layer
above its own (or a sibling package at its layer), nothing outside flower/ imports Flower, the math imports no
model library, files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sfedlora"
# Lower numbers are further down; a module may import its own package and anything below its layer.
LAYERS = {"errors": 0, "core": 1, "methods": 2, "config": 3, "data": 4, "adapters": 4, "runtime": 5, "client": 6,
          "simulation": 7, "flower": 8, "tools": 8, "bench": 8, "api": 9, "cli": 10, "__init__": 11}
MAX_LINES = 330


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [f"{node.module}.{a.name}" if node.module == "sfedlora" else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out.append((".".join(p for p in parts if p != "__init__") or "sfedlora", path))
    return out


def test_every_package_has_a_layer():
    assert {unit_of(m) for m, _ in modules() if m != "sfedlora"} <= set(LAYERS)


def test_no_module_imports_upwards():
    wrong = []
    for module, path in modules():
        me = "__init__" if module == "sfedlora" else unit_of(module)
        for target in imports(path):
            if target.startswith("sfedlora.") or target == "sfedlora":
                other = unit_of(target)
                if LAYERS[other] > LAYERS[me] or (LAYERS[other] == LAYERS[me] and other != me):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_flower_is_imported_only_by_the_flower_package():
    wrong = [f"{m} imports {t}" for m, p in modules() if unit_of(m) not in ("flower",) and m != "sfedlora"
             for t in imports(p) if t.split(".")[0] == "flwr"]
    assert not wrong, wrong


def test_the_math_knows_no_model_library():
    """core/ (the math) and methods/ (the methods as arithmetic over states) work on tensors alone: no transformers,
    peft, Flower or bitsandbytes, so that they read as the papers' formulas and test without a model."""
    banned = {"transformers", "peft", "flwr", "bitsandbytes", "accelerate"}
    wrong = [f"{m} imports {t}" for m, p in modules() if unit_of(m) in ("core", "methods")
             for t in imports(p) if t.split(".")[0] in banned]
    assert not wrong, wrong


def test_files_stay_small():
    big = {str(p.relative_to(SRC)): n for _, p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big
