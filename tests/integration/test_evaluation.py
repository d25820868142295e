"""Evaluation definitions on whole runs: personal and global agree when every client holds the global model."""

from __future__ import annotations

import json

import pytest

from sfedlora.config import load_config
from sfedlora.simulation import Simulation

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out


@pytest.mark.parametrize(("task", "metric"), [("instruction", "perplexity"), ("classification", "accuracy")])
def test_personal_and_global_agree_when_every_client_holds_the_global_model(task, metric, sentiment_file,
                                                                           tmp_path):
    """FedIT leaves every client with the global model, so the personal mean weighted by what each client
    evaluated must equal the global model's value on the pooled splits (before: a mean of per-client
    perplexities against exp of the pooled loss, and aggregation weights instead of evaluated counts)."""
    common = [f"data.source={sentiment_file}", "model.precision=fp32", "data.partition=dirichlet",
              "data.dirichlet_alpha=1.0", "data.min_partition_size=20",
              "fed.clients=3", "fed.rounds=1", "fed.local_steps=2", "train.batch_size=4", "lora.rank=4",
              "fed.method=fedit", "fed.weighting=uniform"]
    if task == "instruction":
        extra = ["model.name=tiny-llama", "data.task=instruction", "data.prompt_field=sentence",
                 "data.response_field=sentiment", "data.category_field=sentiment", "data.partition_by=category"]
    else:
        extra = ["model.name=tiny-bert", "data.task=classification", "data.text_field=sentence",
                 "data.label_field=sentiment"]
    cfg = load_config(None, [*common, *extra])
    Simulation(cfg, tmp_path / "run", echo=lambda s: None, progress=False).run()
    last = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()][-1]["eval"]
    assert len({row["n"] for row in last["personal"]["test"]["clients"]}) > 1  # clients evaluate unequal counts
    for split in ("val", "test"):
        assert last["personal"][split][metric]["weighted"] == pytest.approx(last["global"][split][metric], rel=1e-5)
