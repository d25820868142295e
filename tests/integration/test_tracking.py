"""Experiment trackers: what TensorBoard, W&B (offline) and MLflow (file store) wrote, read back with each
library's own reader, equals the run folder's records."""

from __future__ import annotations

import glob

import pytest

from sfedlora import api
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

BASE = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.max_examples=8"]


def test_every_tracker_gets_the_rounds_the_config_and_the_figures(sentiment_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    api.run(None, [f"data.source={sentiment_file}", *BASE, "tracking=[tensorboard, wandb, mlflow]"], out=out)
    records = rundir.records(out)
    acc = [r["eval"]["personal"]["test"]["accuracy"]["weighted"] for r in records]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    tb.Reload()
    assert [e.value for e in tb.Scalars("personal/test/accuracy")] == pytest.approx(acc)
    assert [e.step for e in tb.Scalars("personal/test/accuracy")] == [0, 1, 2]
    assert any(t.startswith("figures/") for t in tb.Tags()["images"])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("sfedlora").experiment_id])
    history = client.get_metric_history(run.info.run_id, "personal.test.accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(acc)
    assert run.data.params["fed.rounds"] == "2" and run.data.params["resolved.scaling"] == "sfed"
    assert any(a.path.startswith("figures") for a in client.list_artifacts(run.info.run_id))

    (wandb_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(wandb_file, "rb").read()  # W&B's offline record log: protobuf records, strings stored plainly
    assert b"personal/test/accuracy" in data and b"fed.rounds" in data and repr(acc[-1]).encode()[:6] in data


def test_unknown_or_missing_trackers_are_clear_errors(sentiment_file, tmp_path):
    with pytest.raises(SfedloraError, match="tracking must list distinct trackers of tensorboard, wandb, mlflow"):
        api.run(None, [f"data.source={sentiment_file}", *BASE, "tracking=[comet]"], out=tmp_path / "x")
