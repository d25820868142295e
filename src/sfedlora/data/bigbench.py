"""Offline BIG-bench tasks, read from the `bigbench==1.0.0` sdist on PyPI (never installed).

`prepare()` fetches the sdist with pip, streams it once and writes compact JSONL files into the
cache; afterwards every load is a local read. Tasks:
  multiemo                English review sentences (all_sentence_en), 4 sentiment classes
  vitaminc                Wikipedia evidence / claim pairs, True / False / Neither (NLI-like)
  natural-instructions    61 instruction subtasks (input -> target), with the subtask as category
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from sfedlora.data.cache import cache_dir
from sfedlora.errors import SfedloraError

SDIST = "bigbench==1.0.0"
TASKS = {
    "multiemo": "multiemo/all_sentence_en/task.json",
    "vitaminc": "vitaminc_fact_verification/task.json",
    "natural-instructions": "natural_instructions/subtask",
}


def jsonl_path(task: str) -> Path:
    return cache_dir("data") / f"bigbench-{task}.jsonl"


def is_prepared(task: str) -> bool:
    return jsonl_path(task).exists()


def _pip_download(dest: Path) -> Path:
    """Download the sdist with pip. pip >= 24.1 rejects bigbench's metadata (a direct-URL dependency)
    even with --no-deps, so on failure the download is retried with pip 24.0 run from its wheel."""
    cmd = ["download", "--no-deps", "--no-build-isolation", "-d", str(dest), SDIST]
    first = subprocess.run([sys.executable, "-m", "pip", *cmd], capture_output=True, text=True)
    if first.returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), "pip==24.0"],
                       capture_output=True, text=True, check=False)
        wheels = list(dest.glob("pip-24.0-*.whl"))
        second = (
            subprocess.run([sys.executable, str(wheels[0] / "pip"), *cmd], capture_output=True, text=True)
            if wheels else first
        )
        if second.returncode != 0:
            raise SfedloraError(
                f"could not download {SDIST} with pip:\n{second.stderr.strip()[-800:]}\n"
                "Download bigbench-1.0.0.tar.gz yourself and set SFEDLORA_BIGBENCH_SDIST to its path."
            )
    found = list(dest.glob("bigbench-1.0.0.tar.gz"))
    if not found:
        raise SfedloraError(f"pip reported success but no bigbench-1.0.0.tar.gz appeared in {dest}")
    return found[0]


def _records(task: str, member: str, payload: dict) -> list[dict]:
    examples = payload.get("examples", [])
    out: list[dict] = []
    if task == "multiemo":
        for ex in examples:
            label = max(ex["target_scores"], key=ex["target_scores"].get)
            out.append({"text": ex["input"], "label": label})
    elif task == "vitaminc":
        for ex in examples:
            evidence, _, claim = ex["input"].partition("\nClaim: ")
            label = max(ex["target_scores"], key=ex["target_scores"].get)
            out.append({"text": evidence, "text_pair": claim, "label": label})
    else:
        prefix = payload.get("task_prefix", "")
        # The task prefix is a long definition; its closing "Prompt:" part is the instruction proper.
        instruction = prefix.rsplit("Prompt:", 1)[-1].strip() if "Prompt:" in prefix else prefix.strip()
        category = member.rsplit("/", 2)[-2]
        for ex in examples:
            targets = ex.get("target") or []
            if targets:
                out.append({"prompt": f"{instruction}\n\n{ex['input']}".strip(), "response": targets[0],
                            "category": category})
    return out


def prepare(tasks: tuple[str, ...] = tuple(TASKS)) -> dict[str, int]:
    """Extract the given tasks into the cache (one pass over the sdist); return examples per task."""
    todo = [t for t in tasks if not is_prepared(t)]
    counts = {t: sum(1 for _ in jsonl_path(t).open()) for t in tasks if t not in todo}
    if not todo:
        return counts
    with tempfile.TemporaryDirectory() as tmp:
        given = os.environ.get("SFEDLORA_BIGBENCH_SDIST")
        sdist = Path(given) if given else _pip_download(Path(tmp))
        if not sdist.exists():
            raise SfedloraError(f"SFEDLORA_BIGBENCH_SDIST={given} does not exist")
        gathered: dict[str, list[dict]] = {t: [] for t in todo}
        with tarfile.open(sdist, "r|gz") as tar:
            for m in tar:
                if not m.name.endswith("task.json"):
                    continue
                rel = m.name.split("benchmark_tasks/", 1)[-1]
                for task in todo:
                    if rel.startswith(TASKS[task]):
                        fh = tar.extractfile(m)
                        if fh is not None:
                            gathered[task].extend(_records(task, rel, json.load(fh)))
    for task, rows in gathered.items():
        if not rows:
            raise SfedloraError(f"no examples for {task} found in {SDIST}")
        tmp_path = jsonl_path(task).with_suffix(".tmp")
        with tmp_path.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tmp_path.replace(jsonl_path(task))
        counts[task] = len(rows)
    return counts


def load(task: str) -> list[dict]:
    if task not in TASKS:
        raise SfedloraError(f"unknown bigbench task {task!r}; choose one of {', '.join(TASKS)}")
    if not is_prepared(task):
        prepare((task,))
    with jsonl_path(task).open() as f:
        return [json.loads(line) for line in f]
