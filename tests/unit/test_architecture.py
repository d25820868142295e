"""The layout shows the architecture (docs/architecture.md), and stays that way: no module imports a layer
above its own (or a sibling package at its layer), nothing outside flower/ imports Flower, the math imports no
model library, files stay small."""

from __future__ import annotations

from sfedlora.tools.architecture import LAYERS, MODEL_LIBRARIES, SRC, imports, modules, render, unit_of

MAX_LINES = 300


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
    wrong = [f"{m} imports {t}" for m, p in modules() if unit_of(m) in ("core", "methods")
             for t in imports(p) if t.split(".")[0] in MODEL_LIBRARIES]
    assert not wrong, wrong


def test_files_stay_small():
    big = {str(p.relative_to(SRC)): n for _, p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_the_architecture_page_is_generated_from_the_code():
    """docs/architecture.md is what sfedlora.tools.architecture writes (python -m sfedlora.tools.architecture >
    docs/architecture.md): the layer map, the imports and every module's first docstring sentence as they are."""
    page = SRC.parents[1] / "docs" / "architecture.md"
    assert page.read_text() == render(), "docs/architecture.md is stale: regenerate it"


def test_every_module_says_what_it_holds():
    missing = [m for m, p in modules() if not p.read_text().lstrip().startswith('"""')]
    assert not missing, missing
