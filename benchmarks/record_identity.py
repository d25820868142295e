"""Records before and after a refactor: the same runs, written so that two versions of sfedlora can be compared
field by field (a refactor that changes no behaviour leaves them identical but for the timings).

    .venv/bin/python benchmarks/record_identity.py write OUT     # run the cases below, keep their records
    .venv/bin/python benchmarks/record_identity.py compare A B   # every record equal but timings; exit 1 if not

Cases, on the embedded default data and model (fp32, pinned: the records must not depend on the CPU):
default (the default run), hetero (raFLoRA with four ranks), partial (2 of 5 clients a round, disk store,
eval every 2 rounds, global model), flora (merges into the base), flower (SFed-LoRA through the real ClientApp
on an in-process Grid, as tests/flower does). Each takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# group size and attention pinned: `auto` chooses them by timing, which differs from run to run
SMALL = ["fed.rounds=2", "fed.local_steps=2", "eval.max_examples=10", "model.precision=fp32", "train.group_size=1",
         "model.attention=sdpa"]
PER_CLIENT = {"train_loss", "grad_norm_A", "grad_norm_B", "grad_norm_A_steps", "grad_norm_B_steps", "adapter_out_mean",
              "adapter_out_var", "gamma", "rank"}
CASES: dict[str, list[str]] = {
    "default": [],
    "hetero": ["fed.method=raflora", "fed.clients=4", "lora.ranks=[2,4,8,16]"],
    "partial": ["fed.clients=5", "fed.clients_per_round=2", "fed.rounds=3", "eval.every=2",
                "fed.client_store=disk", "eval.global_model=true", "fed.method=fedit"],
    "flora": ["fed.method=flora", "fed.clients=3", "lora.ranks=[2,4,8]"],
    "flower": ["fed.method=sfed-lora", "fed.clients=3", "eval.global_model=false"],
}
TIMINGS = {"train_s", "eval_s", "wall_s", "flower", "seconds", "elapsed_s", "setup_s"}


def strip(value: Any) -> Any:
    """A record without its timings (they differ from run to run), its per-client fields as {client: value} (records
    before per-participant records held lists over all N)."""
    if isinstance(value, dict):
        return {k: (by_client(v) if k in PER_CLIENT else strip(v)) for k, v in value.items()
                if k not in TIMINGS | {"n_clients"}}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def by_client(field: Any) -> Any:
    if isinstance(field, list):
        return {str(c): v for c, v in enumerate(field) if v is not None}
    return field


def run_case(name: str, folder: Path) -> list[dict[str, Any]]:
    from sfedlora.config import load_config
    from sfedlora.runtime import rundir

    cfg = load_config(None, [*SMALL, *CASES[name]])
    if name == "flower":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flower"))
        from flower_grid import LocalGrid

        from sfedlora.flower.client_app import app
        from sfedlora.flower.server import FlowerRun

        FlowerRun(cfg, folder, echo=lambda s: None).run(LocalGrid(app, cfg.fed.clients, str(folder.parent / "nodes")))
    else:
        from sfedlora.simulation import Simulation

        Simulation(cfg, folder, echo=lambda s: None, progress=False).run()
    return [strip(r) for r in rundir.records(folder)]


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            recs = run_case(name, Path(tmp) / "run")
        (out / f"{name}.json").write_text(json.dumps(recs, indent=1, sort_keys=True, allow_nan=True))
        print(f"{name}: {len(recs)} records -> {out / name}.json", flush=True)


def compare(a: Path, b: Path) -> int:
    bad = 0
    for name in CASES:
        x, y = (json.loads((d / f"{name}.json").read_text()) for d in (a, b))
        same = x == y
        bad += not same
        print(f"{name}: {'identical' if same else 'DIFFERENT'} ({len(x)} records)")
        if not same:
            for rx, ry in zip(x, y, strict=False):
                for k in sorted(set(rx) | set(ry)):
                    if rx.get(k) != ry.get(k):
                        print(f"  round {rx.get('round')}: {k}: {str(rx.get(k))[:120]} != {str(ry.get(k))[:120]}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
