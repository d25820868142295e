"""What the `sfedlora flower ...` commands do, as functions: check a run before any process starts, then
run it in Flower's simulation engine, on a local deployment started for it, or on one already running."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sfedlora.config import RunConfig, config_path, load_config
from sfedlora.flower.server import FIRST_TIMEOUT, FlowerRun
from sfedlora.flower.settings import ServerSettings
from sfedlora.runtime import rundir


@dataclass
class Launch:
    """A checked Flower run: the config file (for the ServerApp), the overrides, the parsed config, the
    server settings and the run folder."""

    config: str
    overrides: list[str]
    cfg: RunConfig
    settings: ServerSettings
    out: Path

    def timeout(self, given: float = 0.0) -> float:
        """How long to wait for the whole run: `given`, or (rounds + 2) x round timeout + node wait."""
        per_round = self.settings.round_timeout or FIRST_TIMEOUT  # auto: at most the first exchange's
        return given or (self.cfg.fed.rounds + 2) * per_round + self.settings.node_wait

    def run_settings(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self.settings).items()}


def prepare(items: Sequence[str], out: str | Path | None, settings: ServerSettings) -> Launch:
    """[CONFIG] key=value items as `sfedlora run` takes them; everything that can be wrong with them (config,
    method, ranks, DP settings, a used run folder) is reported here, before any process starts."""
    items = list(items)
    name = items.pop(0) if items and "=" not in items[0] else None
    path = config_path(name)
    cfg = load_config(path, items)
    folder = Path(out) if out else rundir.default_folder(cfg, "flower")
    rundir.check_free(folder)
    FlowerRun(cfg, folder, settings, echo=lambda s: None)  # validates method, ranks and DP settings
    return Launch(str(path.resolve()) if path else "", items, cfg, settings, folder)


def simulate(launch: Launch, cpus_per_client: float = 1.0) -> dict[str, Any]:
    from sfedlora.flower.simulate import simulate as run

    return run(launch.cfg, launch.out, launch.settings, cpus_per_client)


def run_local(launch: Launch, state: Path, port: int, timeout: float = 0.0,
              echo: Callable[[str], None] = print, insecure: bool = False) -> dict[str, Any]:
    """Start a SuperLink and one SuperNode per client on 127.0.0.1, run, stop them."""
    from sfedlora.flower import deploy

    echo(f"starting a local deployment: SuperLink on 127.0.0.1:{port}, {launch.cfg.fed.clients} SuperNodes, "
         + ("insecure (no TLS, no SuperNode authentication)" if insecure else "TLS and SuperNode authentication")
         + f" (logs in {state}/)")
    return deploy.run_local(launch.cfg.fed.clients, state, launch.out, launch.config, launch.overrides,
                            launch.run_settings(), launch.timeout(timeout), port, echo=echo, insecure=insecure)


def submit(launch: Launch, state: Path, timeout: float = 0.0, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run on a deployment started with `sfedlora flower up`."""
    from sfedlora.flower import deploy

    return deploy.submit(state, launch.out, launch.config, launch.overrides, launch.run_settings(),
                         launch.timeout(timeout), echo=echo)
