"""The docs say what the code does: the Python API's example runs as written, every public name is
documented, and every `sfedlora` command shown in the docs parses (and its configs validate)."""

from __future__ import annotations

import re
from pathlib import Path

import sfedlora

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (example,) = python_blocks(DOCS / "api.md")
    exec(compile(example, "docs/api.md", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "4.0" and (tmp_path / "exported" / "api-example" / "adapter" / "adapter_config.json").exists()


def test_every_public_name_is_documented():
    text = (DOCS / "api.md").read_text()
    missing = [name for name in sfedlora.__all__ if f"sfedlora.{name}" not in text]
    assert not missing, missing
