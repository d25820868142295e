"""lora.scaling=adaptive in real runs: N_eff is measured at the first aggregation (near N with independent
inits, 1 with a shared one), recorded with the gammas per module, and survives a resume."""

from __future__ import annotations

import os

import pytest

from sfedlora.cli import main
from sfedlora.core.scaling import scaling
from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, rundir

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

BASE = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=4", "fed.rounds=3", "fed.local_steps=3",
        "train.batch_size=4", "eval.max_examples=8", "fed.method=sfed-lora", "lora.scaling=adaptive", "lora.rank=16",
        "lora.alpha=8"]


def _records(sentiment_file, out, *extra):
    assert main(["run", f"data.source={sentiment_file}", *BASE, *extra, "--out", str(out), "--quiet"]) == 0
    return rundir.records(out)


def test_independent_inits_measure_about_n(sentiment_file, tmp_path):
    recs = _records(sentiment_file, tmp_path / "run", "lora.init=independent")
    rslora = scaling("rslora", 8.0, 16)
    assert list(recs[1]["gamma"].values()) == [pytest.approx(rslora)] * 4  # round 1 trains before any averaging
    assert recs[1]["adaptive"]["gamma_trained"] == {}
    n_eff = recs[1]["adaptive"]["n_eff"]
    assert len(n_eff) == 4 and all(abs(v - 4) <= 0.4 for v in n_eff.values()), n_eff  # within 10% of N = 4
    for r in recs[2:]:  # measured once, kept; every module's gamma = alpha * sqrt(N_eff / r)
        assert r["adaptive"]["n_eff"] == n_eff
        assert r["adaptive"]["gamma_trained"] == {m: pytest.approx(8.0 * (v / 16) ** 0.5) for m, v in n_eff.items()}
        assert r["gamma"]["0"] == pytest.approx(sum(r["adaptive"]["gamma_trained"].values()) / 4)


def test_a_shared_init_stays_at_rslora(sentiment_file, tmp_path):
    recs = _records(sentiment_file, tmp_path / "run", "lora.init=shared")
    rslora = scaling("rslora", 8.0, 16)
    for r in recs[1:]:
        assert list(r["gamma"].values()) == [pytest.approx(rslora, rel=1e-3)] * 4
        assert all(v == pytest.approx(1.0, rel=1e-3) for v in r["adaptive"]["n_eff"].values())


def test_cumulative_reestimates_every_round_within_one_and_n(sentiment_file, tmp_path):
    recs = _records(sentiment_file, tmp_path / "run", "lora.init=independent", "lora.adaptive=cumulative",
                    "train.lr=5e-3")
    seen = [r["adaptive"]["n_eff"] for r in recs[1:]]
    assert all(1.0 <= v <= 4.0 for n in seen for v in n.values())
    assert seen[0] != seen[-1]  # re-estimated: training moves the aggregated A


def test_adaptive_resumes_with_its_measured_n_eff(sentiment_file, tmp_path):
    straight = _records(sentiment_file, tmp_path / "a", "lora.init=independent")
    out = tmp_path / "b"
    _records(sentiment_file, out, "lora.init=independent")
    for name in (rundir.SUMMARY, rundir.ADAPTERS, checkpoint.NAME):  # back to the round-2 checkpoint
        (out / name).unlink()
    os.replace(out / checkpoint.PREVIOUS, out / checkpoint.NAME)
    lines = (out / rundir.METRICS).read_text().splitlines()
    (out / rundir.METRICS).write_text("\n".join(lines[:3]) + "\n")
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = rundir.records(out)
    assert again[3]["adaptive"] == straight[3]["adaptive"]
    assert again[3]["eval"]["personal"] == straight[3]["eval"]["personal"]


def test_adaptive_is_refused_where_it_does_not_fit(sentiment_file):
    from sfedlora.config import load_config
    from sfedlora.runtime.resolve import check

    for extra, message in ((["fed.method=fedit"], "use it with fedsa-lora"),
                           (["lora.ranks=[4,8,4,8]"], "needs equal ranks")):
        with pytest.raises(SfedloraError, match=message):
            check(load_config(None, [f"data.source={sentiment_file}", *BASE, *extra]))
