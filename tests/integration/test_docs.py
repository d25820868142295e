"""The docs say what the code does: the Python API's example runs as written, every public name is
documented, and every `sfedlora` command shown in the docs parses (and its configs validate)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

import sfedlora

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

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


ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for every command in the docs' bash blocks (continuations joined, comments dropped)."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line and not line.startswith("#"):
                    out.append((page.name, line.removeprefix("$ ")))
    return out


def check_sfedlora_command(argv: list[str], tmp_path: Path) -> None:
    """Parses as the CLI parses it; the configs it names load and fit their methods (no data, no model)."""
    from sfedlora.cli import build_parser
    from sfedlora.config import config_path, load_config
    from sfedlora.runtime.resolve import check

    args = build_parser().parse_args(argv)
    if args.command in ("run", "config") and not getattr(args, "resume", None):
        items = list(args.items)
        name = items.pop(0) if items and "=" not in items[0] else None
        check(load_config(config_path(name), items))
    elif args.command == "sweep":
        from sfedlora.tools.sweep import parse_only, plan

        plan(args.spec, args.size, tmp_path / "sweep", list(args.overrides), parse_only(args.only))
    elif args.command == "flower" and args.flower_command in ("run", "simulate", "submit"):
        from sfedlora.flower.launch import prepare
        from sfedlora.flower.settings import ServerSettings

        prepare(args.items, tmp_path / "flower", ServerSettings())


def check_external_command(argv: list[str]) -> None:
    """A Flower tool: it exists in this environment and knows every option the docs give it."""
    import shutil
    import subprocess

    tool = argv[0]
    sub = [a for a in argv[1:3] if a in ("run", "supernode", "register")] if tool == "flwr" else []
    exe = shutil.which(tool) or str(Path(sys.executable).parent / tool)
    helptext = subprocess.run([exe, *sub, "--help"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"}).stdout
    flags = [a.split("=")[0] for a in argv if a.startswith("--")]
    assert helptext and all(f in helptext for f in flags), (tool, [f for f in flags if f not in helptext])


def test_every_command_in_the_docs_is_valid(tmp_path):
    import itertools
    import shlex

    makefile = (ROOT / "Makefile").read_text()
    seen = 0
    for page, line in shell_commands():
        argv = shlex.split(line)
        while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # the command's environment
            argv = argv[1:]
        argv = list(itertools.takewhile(lambda a: not a.startswith((">", "2>", "&")), argv))  # redirections
        if argv[0] == "make":
            assert re.search(rf"(?m)^{argv[1]}:", makefile), (page, line)
        elif argv[0].endswith("sfedlora"):
            check_sfedlora_command(argv[1:], tmp_path)
        elif argv[0] in ("flwr", "flower-superlink", "flower-supernode"):
            check_external_command(argv)
        elif argv[0].endswith("python") and argv[1].startswith("benchmarks/"):  # a script: it exists and parses
            import subprocess

            done = subprocess.run([sys.executable, str(ROOT / argv[1]), "--help"], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, (page, line, done.stderr[-500:])
        elif argv[0] != "ssh-keygen":  # OpenSSH's, not ours
            raise AssertionError(f"{page}: a command no check covers: {line}")
        seen += 1
    assert seen >= 25
