"""The same ServerApp and ClientApp in Flower's simulation engine (Ray backend), in one command.

Each virtual SuperNode is partition `partition-id` of `num-partitions` = fed.clients (set by Flower);
Ray's workers keep their Node (model and data) across messages, so only the first message per worker
pays the set-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sfedlora.config import RunConfig
from sfedlora.errors import SfedloraError
from sfedlora.flower.settings import ServerSettings


def simulate(cfg: RunConfig, out: Path, settings: ServerSettings | None = None,
             cpus_per_client: float = 1.0) -> dict[str, Any]:
    for key, value in (("FLWR_TELEMETRY_ENABLED", "0"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")):
        os.environ.setdefault(key, value)
    from flwr.simulation import run_simulation

    from sfedlora.flower.client_app import app as client_app
    from sfedlora.flower.server_app import make_server_app

    out = Path(out).resolve()
    for name in ("summary.json", "error.txt"):
        if (out / name).exists():
            (out / name).unlink()
    cpus = os.cpu_count() or 1
    backend: dict[str, Any] = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True}}
    run_simulation(server_app=make_server_app(cfg, out, settings), client_app=client_app,
                   num_supernodes=cfg.fed.clients, backend_config=backend)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    if (out / "error.txt").exists():
        raise SfedloraError("the ServerApp failed: " + (out / "error.txt").read_text().strip())
    raise SfedloraError(f"the simulation ended without a result in {out}")
