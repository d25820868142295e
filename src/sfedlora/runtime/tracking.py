"""Experiment trackers (`tracking: [tensorboard, wandb, mlflow]`, any subset): every round's metrics, the
resolved config as hyper-parameters, and at the end the run's report figures as artifacts. The run folder
stays the source of truth; trackers get a copy, written into the run folder:

  tensorboard   <run>/tensorboard/   event files (torch.utils.tensorboard; scalars, config text, figures)
  wandb         <run>/wandb/         an offline run (mode=offline; `wandb sync` uploads it later)
  mlflow        <run>/mlflow.db      a local SQLite store, artifacts in <run>/mlartifacts/ (or
                                     $MLFLOW_TRACKING_URI when set; MLflow 3 retired its plain file store)

A sweep's runs share a group: W&B's `group`, MLflow's experiment name, a TensorBoard tag prefix.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfedlora.config import dotted
from sfedlora.errors import SfedloraError
from sfedlora.runtime.records import clients_mean


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys; lists as text (hyper-parameters must be scalars)."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in dotted(config).items()}


def round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The scalars a tracker gets for one round: weighted personalised (and global) metrics per split, and the
    means over the round's clients of the training statistics."""
    out: dict[str, float] = {}
    ev = record.get("eval") or {}
    for scope in ("personal", "global"):
        for split, block in (ev.get(scope) or {}).items():
            for metric, value in block.items():
                if isinstance(value, dict) and "weighted" in value:
                    out[f"{scope}/{split}/{metric}"] = float(value["weighted"])
                elif isinstance(value, (int, float)) and metric not in ("n", "tokens", "n_decoded"):
                    out[f"{scope}/{split}/{metric}"] = float(value)
    for key in ("train_loss", "grad_norm_A", "grad_norm_B", "adapter_out_var", "gamma"):
        m = clients_mean(record.get(key))
        if m is not None:
            out[f"train/{key}"] = m
    for key in ("lr", "bytes_up", "bytes_down", "wall_s", "n_averaged"):
        if isinstance(record.get(key), (int, float)):
            out[f"round/{key}"] = float(record[key])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def check(names: Sequence[str]) -> None:
    """A tracker whose library is not installed stops the run before it starts (config.validate has
    checked the names are among TRACKERS)."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:  # each tracker's package has its name
            raise SfedloraError(f"tracking: {name} needs the {name} package: "
                                "pip install 'sfedlora[tracking]'")


class Trackers:
    """The configured trackers of one run."""

    def __init__(self, names: Sequence[str], run_dir: Path, config: dict[str, Any], group: str = "") -> None:
        check(names)
        self.names, self.run_dir = list(names), Path(run_dir)
        self.group = group
        self.name = self.run_dir.name
        params = hyperparameters(config)
        self.tb = self.wb = self.ml = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)
        if "wandb" in self.names:
            import wandb

            self.wb = wandb.init(mode="offline", dir=str(self.run_dir), project="sfedlora", name=self.name,
                                 group=self.group or None, config=params, reinit="create_new")
        if "mlflow" in self.names:
            import mlflow

            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
            self.ml = mlflow.MlflowClient(tracking_uri=uri)
            experiment = self.group or "sfedlora"
            found = self.ml.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.ml.create_experiment(
                experiment, artifact_location=(self.run_dir / "mlartifacts").resolve().as_uri())
            self.ml_run = self.ml.create_run(exp_id, run_name=self.name).info.run_id
            from mlflow.entities import Param

            entries = [Param(k, str(v)[:500]) for k, v in params.items()]
            for i in range(0, len(entries), 100):  # MLflow takes at most 100 parameters per batch
                self.ml.log_batch(self.ml_run, params=entries[i:i + 100])

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["round"])
        metrics = round_metrics(record)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wb is not None:
            self.wb.log(metrics, step=step)
        if self.ml is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            self.ml.log_batch(self.ml_run, metrics=[Metric(k.replace("/", "."), v, stamp, step)
                                                    for k, v in metrics.items()])

    def finish(self, figures: Sequence[Path] = ()) -> None:
        """The report's figures as artifacts, then close every tracker."""
        if self.tb is not None:
            import matplotlib.image as mpimg

            for path in figures:
                self.tb.add_image(f"figures/{path.stem}", mpimg.imread(path)[..., :3], 0, dataformats="HWC")
            self.tb.close()
        if self.wb is not None:
            import wandb

            if figures:
                self.wb.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures})
            self.wb.finish()
        if self.ml is not None:
            for path in figures:
                self.ml.log_artifact(self.ml_run, str(path), "figures")
            self.ml.set_terminated(self.ml_run)
