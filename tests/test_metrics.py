"""Means over clients, by hand: weighted by what each client evaluated (examples; tokens for LM losses;
decoded examples for math accuracy), never by aggregation weights; perplexity is exp of a mean token loss
for personal and global alike, so the two can be compared."""

from __future__ import annotations

import json
import math

import pytest

from sfedlora.config import load_config
from sfedlora.core.metrics import means, personal
from sfedlora.simulation import Simulation


def test_lm_means_weight_by_tokens_and_take_exp_of_the_mean_loss():
    rows = [{"loss": 1.0, "n": 2, "tokens": 10, "perplexity": math.e},
            {"loss": 3.0, "n": 3, "tokens": 30, "perplexity": math.e ** 3}]
    got = means(rows)
    assert got["loss"] == pytest.approx({"uniform": 2.0, "weighted": 2.5})  # (10 * 1 + 30 * 3) / 40
    assert got["perplexity"]["weighted"] == pytest.approx(math.exp(2.5))  # not (e + e^3) / 2 = 11.4
    assert got["perplexity"]["uniform"] == pytest.approx(math.exp(2.0))
    assert set(got) == {"loss", "perplexity"}  # counts are not averaged


def test_classification_means_weight_by_examples_whatever_the_aggregation_weighting():
    rows = [{"loss": 0.5, "n": 10, "accuracy": 0.9}, {"loss": 1.0, "n": 30, "accuracy": 0.5},
            {"loss": 0.0, "n": 0, "accuracy": 0.0}]  # a client with nothing to evaluate does not count
    got = means(rows)
    assert got["accuracy"] == pytest.approx({"uniform": 0.7, "weighted": 0.6})  # (9 + 15) / 40
    assert got["loss"] == pytest.approx({"uniform": 0.75, "weighted": 0.875})  # (5 + 30) / 40
    assert personal({"val": rows, "test": rows})["test"]["accuracy"]["weighted"] == pytest.approx(0.6)


def test_math_accuracy_weights_by_decoded_examples():
    rows = [{"loss": 1.0, "n": 10, "tokens": 100, "perplexity": math.e, "accuracy": 1.0, "n_decoded": 1},
            {"loss": 1.0, "n": 10, "tokens": 100, "perplexity": math.e, "accuracy": 0.0, "n_decoded": 3}]
    assert means(rows)["accuracy"] == pytest.approx({"uniform": 0.5, "weighted": 0.25})


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
