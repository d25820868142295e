"""sfedlora's Python API: what the CLI does, as functions (docs/api.md).

    import sfedlora
    result = sfedlora.run("syllogism", overrides=["fed.rounds=3"], out="runs/syl")
    result.summary["personal"]["best"], result.records[-1]["eval"], result.path
    sfedlora.export(result.path, client=0, out="exported/vc-0")
    again = sfedlora.load_run("runs/vc")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfedlora.config import RunConfig, config_path, load_config
from sfedlora.errors import SfedloraError
from sfedlora.runtime import lock, rundir
from sfedlora.runtime.resolve import Resolved


@dataclass
class RunResult:
    """A run folder, read: its config, run description, per-round records and summary (None while the run is
    unfinished)."""

    path: Path
    config: RunConfig
    resolved: Resolved
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None

    def metric(self, scope: str = "personal", which: str = "best", split: str = "test") -> float | None:
        """The run's primary metric (accuracy or perplexity): `personal` (weighted mean over clients) or
        `global`, at the `best` (on validation) or `last` evaluated round, on `split`."""
        if self.summary is None or not self.summary[scope][which]:
            return None
        value = self.summary[scope][which][split]
        return float(value["weighted"] if isinstance(value, dict) else value)


def _config(config: str | Path | RunConfig | None, overrides: Sequence[str]) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raise SfedloraError("give overrides with a config file or name, or set them on the RunConfig object")
        return config
    return load_config(config_path(None if config is None else str(config)), list(overrides))


def _finished(sim: Any) -> None:
    """A finished run's trackers closed, with the run's figures where there are trackers to take them."""
    from sfedlora.tools.report import run_figures

    sim.log.close(run_figures(sim.out_dir) if sim.log.trackers else [])


def run(config: str | Path | RunConfig | None = None, overrides: Sequence[str] = (), out: str | Path | None = None,
        progress: bool = False, echo: Callable[[str], None] | None = None) -> RunResult:
    """Run one federated fine-tuning in this process. `config`: a YAML path, a built-in name (`default`,
    `syllogism`, ...), a RunConfig, or None for the defaults; `overrides`: dotted `key=value` strings; `out`:
    the run folder (default runs/<name>-<method>-r<rank>-<time>; it must not hold anything yet)."""
    from sfedlora.simulation import Simulation

    cfg = _config(config, overrides)
    folder = Path(out) if out is not None else rundir.default_folder(cfg)
    with lock.hold(folder):  # one writer per run folder, from the check to the summary
        rundir.check_free(folder)
        sim = Simulation(cfg, folder, echo=echo or (lambda s: None), progress=progress)
        sim.run(close=False)
        _finished(sim)
    return load_run(folder)


def resume(path: str | Path, progress: bool = False, echo: Callable[[str], None] | None = None,
           redraw_damaged: bool = False) -> RunResult:
    """Continue an interrupted run folder from its last checkpoint, with the config and group sizes it
    recorded; the result equals an uninterrupted run's. `redraw_damaged` (fed.client_store=disk): a client
    whose state file is damaged starts again from its seed, recorded as `redrawn_clients` in the round."""
    from sfedlora.simulation import Simulation

    folder = Path(path)
    if not folder.is_dir():
        raise SfedloraError(f"{folder} is not a run folder")
    with lock.hold(folder):  # a run still going cannot be resumed under it
        cfg, resolved = rundir.read(folder)
        if resolved.engine != "simulation":
            raise SfedloraError(f"{folder} is a {resolved.engine} run: the in-process runner cannot resume it (a "
                                "Flower run continues through its nodes' saved state when a SuperNode restarts)")
        if rundir.finished(folder):
            raise SfedloraError(f"{folder} is a finished run (it has summary.json); nothing to resume")
        sim = Simulation(cfg, folder, echo=echo or (lambda s: None), progress=progress, resolved=resolved,
                         redraw_damaged=redraw_damaged)
        sim.run(resume=True, close=False)
        _finished(sim)
    return load_run(folder)


def load_run(path: str | Path) -> RunResult:
    """Read a run folder (finished or not)."""
    folder = Path(path)
    cfg, resolved = rundir.read(folder)
    records = rundir.records(folder) if (folder / rundir.METRICS).exists() else []
    return RunResult(folder, cfg, resolved, records, rundir.summary(folder) if rundir.finished(folder) else None)


def export(run: str | Path | RunResult, client: int, out: str | Path, merged: bool = True, force: bool = False,
           node_dir: str | Path | None = None, best: bool = False, round: int | None = None) -> dict[str, Any]:
    """Write client `client` of a finished run as a PEFT adapter folder (out/adapter) and, with `merged`, a
    model with the adapter merged in (out/merged). Returns what was written (rank, gamma, PEFT's alpha...).
    `out` must be new or empty unless `force` (then it is replaced whole); a Flower run's adapters are read
    from the directory of the node that trained the client (`node_dir`). `best`: the client's adapters at the
    best-on-validation round instead of the last; `round`: those after round `round` (a run with
    keep_round_adapters=true keeps every checkpointed round's)."""
    from sfedlora.tools.export import export as write

    folder = run.path if isinstance(run, RunResult) else Path(run)
    return write(folder, client, Path(out), merged=merged, force=force,
                 node_dir=None if node_dir is None else Path(node_dir), best=best, rnd=round)


def lm_eval(run: str | Path | RunResult, tasks: Sequence[str], client: int = 0, include_path: str | Path | None = None,
            limit: float | None = None, num_fewshot: int | None = None, best: bool = False,
            round: int | None = None, log_samples: bool = False, batch_size: int = 8,
            node_dir: str | Path | None = None) -> dict[str, Any]:
    """Client `client`'s exported model under lm-evaluation-harness (`sfedlora eval --lm-eval`): lm-eval's
    `hf` model with the PEFT adapter, on lm-eval task names or tasks of your own (YAML files in
    `include_path`; `batch_size` per lm-eval batch; `node_dir`: a Flower run's node that trained the client). Returns
    {task: {metric: value}}; the record is RUN/lm-eval/client-I.json."""
    from sfedlora.tools.harness import evaluate

    folder = run.path if isinstance(run, RunResult) else Path(run)
    return evaluate(folder, client, list(tasks), None if include_path is None else Path(include_path), limit,
                    batch_size, num_fewshot=num_fewshot, best=best, rnd=round, log_samples=log_samples,
                    node_dir=None if node_dir is None else Path(node_dir))


def sweep(spec: str | Path, size: str = "quick", out: str | Path | None = None, overrides: Sequence[str] = (),
          only: Sequence[str] = (), dry_run: bool = False) -> list[Any]:
    """An experiment grid (`sfedlora sweep`): `spec` a YAML file or a built-in experiment, at `size` (quick: offline
    models and data; paper: the paper's hub models), `overrides` applied to every run, `only` KEY=V1,V2 filters. Runs
    every run not finished yet (a re-run resumes; one finished with other settings stops the sweep), unless
    `dry_run`. Returns the planned runs (folder, overrides, whether done), in the folder `out` (default
    runs/sweeps/<name>-<size>)."""
    from sfedlora.tools.sweep import load_spec, parse_only, plan, run_sweep

    loaded, _ = load_spec(str(spec), size)
    folder = Path(out) if out else Path("runs") / "sweeps" / f"{loaded.get('name', Path(spec).stem)}-{size}"
    runs = plan(str(spec), size, folder, list(overrides), parse_only(only))
    if not dry_run:
        run_sweep(runs)
    return runs


def _setting(option: str, text: str | None, example: str) -> tuple[str, str] | None:
    if not text:
        return None
    key, sep, value = text.partition("=")
    if not sep:
        raise SfedloraError(f"{option} {text!r} must be SETTING=VALUE, e.g. {example}")
    return key.strip(), value.strip()


def report(dirs: Sequence[str | Path], out: str | Path | None = None, reference: str | None = None,
           rates: str = "per-arm", rate_at: str | None = None, rate: float | None = None,
           only: Sequence[str] = ()) -> Path:
    """The report of the runs under `dirs` (`sfedlora report`): figures, report.md and report.html in `out` (default
    DIR/report); `reference` SETTING=VALUE names the arms of the paired differences (default: method=sfed-lora or
    scaling=sfed where the arms have it). `rates`: the rate protocol (per-arm: each arm's rate chosen on
    validation; transfer: chosen on validation at `rate_at` AXIS=VALUE, e.g. rank=8, then used at every value of
    the axis; fixed: `rate` for every arm); `only`: SETTING=V1,V2 filters the runs read (e.g. optimizer=adamw).
    Returns the HTML page."""
    from sfedlora.tools.report import build_report

    folders = [Path(d) for d in dirs]
    from sfedlora.tools.sweep import parse_only

    return build_report(folders, Path(out) if out else folders[0] / "report",
                        _setting("--reference", reference, "method=sfed-lora"), rates,
                        _setting("--rate-at", rate_at, "rank=8"), rate, parse_only(only))


def diagnose(settings: Any = None, out: str | Path = "runs/diagnose") -> str:
    """The numerical check of the scaling theorem on a wide linear adapter (`sfedlora diagnose`), with `settings` (a
    tools.diagnose.DiagnoseConfig; None: its defaults): diagnose.json, .md and .png in `out`. Returns the slope
    table (markdown)."""
    from sfedlora.tools.diagnose import DiagnoseConfig, run_diagnose, write

    return write(run_diagnose(settings or DiagnoseConfig()), Path(out))
