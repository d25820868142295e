"""Flower is an optional extra: with it missing, sfedlora imports, runs in process, and a Flower command
says what to install (no traceback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoFlower(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "flwr" or name.startswith("flwr."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoFlower())
    import sfedlora
    from sfedlora.cli import main

    assert main(["flower", "run", "fed.rounds=1"]) == 2
    result = sfedlora.run(overrides=sys.argv[2:], out=sys.argv[1])
    print("rounds", len(result.records), "flwr loaded:", any(m.split(".")[0] == "flwr" for m in sys.modules))
""")


def test_runs_and_explains_without_flower(sentiment_file, tmp_path):
    args = [f"data.source={sentiment_file}", "model.name=tiny-bert", "model.precision=fp32", "data.task=classification",
            "data.text_field=sentence", "data.label_field=sentiment", "data.partition=iid", "fed.clients=2",
            "fed.rounds=1", "fed.local_steps=1", "train.batch_size=4"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), *args], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rounds 2 flwr loaded: False" in proc.stdout
    assert "pip install 'sfedlora[flower]'" in proc.stderr and "Traceback" not in proc.stderr
