"""The Flower ServerApp. `app` reads its settings from the run config (`flwr run ... --run-config`):

  config          path of a sfedlora YAML config or a packaged config name ("" = the default)
  overrides       dotted overrides, space-separated ("lora.rank=64 fed.rounds=5")
  out             the run folder to write ("" = runs/flower/<time>)
  round-timeout   seconds a round waits for replies (default 600)
  node-wait       seconds to wait for the nodes to connect (default 120)

A failed run writes error.txt in the run folder (`flwr run` returns 0 whatever the ServerApp does, so
callers check for summary.json or error.txt).
"""

from __future__ import annotations

import shlex
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from sfedlora.config import RunConfig, load_config
from sfedlora.errors import SfedloraError
from sfedlora.flower.server import FlowerRun
from sfedlora.flower.settings import ServerSettings
from sfedlora.runtime import lock


def settings_from(run_config: dict[str, Any]) -> tuple[RunConfig, Path, ServerSettings]:
    cfg = load_config(str(run_config.get("config") or "") or None, shlex.split(str(run_config.get("overrides", ""))))
    out = Path(str(run_config.get("out") or "") or f"runs/flower/{time.strftime('%Y%m%d-%H%M%S')}")
    settings = ServerSettings(round_timeout=float(run_config.get("round-timeout", 0)),
                              node_wait=float(run_config.get("node-wait", 120)))
    return cfg, out, settings


def execute(grid: Grid, cfg: RunConfig, out: Path, settings: ServerSettings) -> None:
    """Run, and leave error.txt in the run folder if the run fails."""
    try:
        with lock.hold(out):  # one writer per run folder
            FlowerRun(cfg, out, settings).run(grid)
    except Exception as exc:
        out.mkdir(parents=True, exist_ok=True)
        text = str(exc) if isinstance(exc, SfedloraError) else traceback.format_exc()
        (out / "error.txt").write_text(text + "\n")
        raise


def make_server_app(cfg: RunConfig | None = None, out: Path | None = None,
                    settings: ServerSettings | None = None) -> ServerApp:
    """A ServerApp bound to a config (the simulation path), or reading `context.run_config` (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:
            run_cfg, run_out, run_settings = settings_from(dict(context.run_config))
        else:
            run_cfg, run_out, run_settings = cfg, Path(out or "runs/flower/simulation"), settings or ServerSettings()
        execute(grid, run_cfg, run_out, run_settings)

    return app


app = make_server_app()
