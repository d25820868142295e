"""fed.client_store=disk runs exactly the run the memory store runs: the same records, adapters and exports,
with files only for the clients that trained; a crashed disk run resumes to the same end; eval.clients
evaluates a seeded sample and says which."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import after_local_training, killed_in_round

from sfedlora.config import load_config
from sfedlora.errors import SfedloraError
from sfedlora.runtime import rundir
from sfedlora.runtime.resolve import check, client_store
from sfedlora.simulation import Simulation
from sfedlora.tools.export import client_adapters

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "data.min_partition_size=10", "fed.clients=8",
        "fed.clients_per_round=3", "fed.rounds=3", "fed.local_steps=2", "train.batch_size=4", "eval.batch_size=16",
        "lora.rank=4", "train.optimizer=adamw", "train.optimizer_state=keep", "eval.initial=false"]
TIMES = ("train_s", "eval_s", "wall_s")


def _sim(sentiment_file, out, store, *extra):
    cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, f"fed.client_store={store}", *extra])
    return Simulation(cfg, out, echo=lambda s: None, progress=False)


def _records(out):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rundir.records(out)]


@pytest.mark.parametrize("extra", [("fed.method=sfed-lora", "lora.init=independent"),
                                   ("fed.method=raflora", "lora.rank_set=[2,4]"),
                                   ("fed.method=fedit",)], ids=["sfed-lora", "raflora", "fedit"])
def test_a_disk_store_runs_the_memory_stores_run(sentiment_file, tmp_path, extra):
    memory = _sim(sentiment_file, tmp_path / "memory", "memory", *extra)
    memory.run()
    disk = _sim(sentiment_file, tmp_path / "disk", "disk", *extra)
    disk.run()
    assert disk.resolved.client_store == "disk" and memory.resolved.client_store == "memory"
    assert _records(tmp_path / "disk") == _records(tmp_path / "memory")
    last = _records(tmp_path / "disk")[-1]  # between rounds the runner holds the last round's participants, no more
    assert set(disk._now) == set(last["participants"]) and len(disk._now) == 3
    took_part = disk.store.took_part()
    assert 3 <= len(took_part) < 8  # 3 of 8 per round for 3 rounds: some never trained
    files = sorted(p.name for p in (tmp_path / "disk" / "clients").iterdir())
    assert files == [f"client-{c}.safetensors" for c in took_part]
    for c in range(8):  # every client, trained or not, holds the same adapters as in the memory run
        a, b = memory.states[c], disk.states[c]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = rundir.load_adapters(tmp_path / "disk")
    assert saved["clients"] == took_part and saved["states"] == []
    links = sorted(p.name for p in (tmp_path / "disk" / "adapters.clients").iterdir())
    assert links == files  # hard links, not copies
    assert (tmp_path / "disk" / "adapters.clients" / files[0]).stat().st_ino == \
        (tmp_path / "disk" / "clients" / files[0]).stat().st_ino
    never = next(c for c in range(8) if c not in took_part)
    cfg, resolved = rundir.read(tmp_path / "disk")
    for c in [*took_part, never]:  # what export reads: a trained client's file, or a never-trained one redrawn
        mine = client_adapters(tmp_path / "disk", saved, c, cfg, resolved)
        assert mine.keys() == memory.states[c].keys() and all(torch.equal(mine[k], memory.states[c][k]) for k in mine)
    best = rundir.load_adapters(tmp_path / "disk", best=True)
    assert best["clients_folder"] == "adapters.best.clients"


@pytest.mark.parametrize("extra", [("fed.method=fedsa-lora", "lora.init=independent"), ("fed.method=ffa-lora",),
                                   ("fed.method=rolora",), ("fed.method=hetlora", "lora.rank_set=[2,4]"),
                                   ("fed.method=raflora", "lora.rank_set=[2,4]"),
                                   ("fed.method=flexlora", "lora.rank_set=[2,4]")],
                         ids=["fedsa-lora", "ffa-lora", "rolora", "hetlora", "raflora", "flexlora"])
def test_downloading_when_next_used_equals_downloading_every_round(sentiment_file, tmp_path, extra, monkeypatch):
    """The reference: every client downloads every round's update right after the aggregation (the runner's
    way before the client store), with partial participation and a participant excluded in round 2."""
    sim = _sim(sentiment_file, tmp_path / "run", "memory", "fed.rounds=4", *extra)
    n, gammas = sim.store.n, sim.resolved.gammas
    eager = [dict(s) for s in sim.states]
    trained: dict[int, dict[str, torch.Tensor]] = {}
    aggregate, recorded = sim.server.aggregate, sim.recorded
    first: dict[int, int] = {}

    def poisoned(rnd, c, held, stats):
        if rnd == 2 and first.setdefault(rnd, c) == c:
            key = next(k for k in held.adapters if k.endswith("lora_B"))
            held.adapters[key] = torch.full_like(held.adapters[key], float("nan"))
        trained[c] = held.adapters
        return held, stats

    def eager_aggregate(rnd, ex):
        update = aggregate(rnd, ex)
        for c in ex.uploads:  # accepted: its trained state; excluded: its state before the round
            eager[c] = trained[c]
        for c in range(n):
            eager[c] = sim.method.download(eager[c], update, gammas[c])
        return update

    def checked(record, log):
        for c in range(n):
            now = sim.states[c]
            assert now.keys() == eager[c].keys() and all(torch.equal(now[k], eager[c][k]) for k in now), (record, c)
        recorded(record, log)

    after_local_training(monkeypatch, sim, poisoned)
    sim.server.aggregate, sim.recorded = eager_aggregate, checked
    sim.run()
    assert [len(r["excluded"]) for r in rundir.records(tmp_path / "run")] == [0, 1, 0, 0]


def test_a_crashed_disk_run_resumes_to_the_same_end(sentiment_file, tmp_path):
    extra = ("fed.method=sfed-lora", "fed.rounds=4")
    straight = _sim(sentiment_file, tmp_path / "straight", "disk", *extra)
    straight.run()
    crashed = _sim(sentiment_file, tmp_path / "crashed", "disk", *extra)
    original = crashed._train

    def killed(rnd, members, bar):  # round 3 is killed after its first client was stored
        for i, out in enumerate(original(rnd, members, bar)):
            if rnd == 3 and i == 1:
                raise KeyboardInterrupt("killed in round 3")
            yield out

    crashed._train = killed
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    first = rundir.records(tmp_path / "crashed")[-1]
    assert first["round"] == 2  # and a client of round 3 is stored past the checkpoint: resume must undo it
    resumed = _sim(sentiment_file, tmp_path / "crashed", "disk", *extra)
    resumed.run(resume=True)
    assert _records(tmp_path / "crashed") == _records(tmp_path / "straight")
    for a, b in zip(straight.states, resumed.states, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir())
    assert kept == ["clients-round-3", "clients-round-4"]  # the newest checkpoint's and the previous one's


def test_a_run_recorded_before_the_store_resumes_with_its_states_in_memory(sentiment_file, tmp_path):
    """A checkpoint written before fed.client_store existed holds every client's states in itself: the resumed
    run keeps them in memory whatever the store would resolve to now, and ends as an uninterrupted run."""
    import yaml

    from sfedlora import api

    extra = ("fed.method=sfed-lora", "fed.rounds=3")
    straight = _sim(sentiment_file, tmp_path / "straight", "memory", *extra)
    straight.run()
    killed_in_round(_sim(sentiment_file, tmp_path / "old", "memory", *extra), 3)
    path = tmp_path / "old" / "config.yaml"
    conf = yaml.safe_load(path.read_text())
    del conf["resolved"]["client_store"]  # as a run of an older version recorded it
    conf["fed"]["client_store"] = "disk"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    api.resume(tmp_path / "old")
    assert _records(tmp_path / "old") == _records(tmp_path / "straight")
    assert not (tmp_path / "old" / "clients").exists()


def test_eval_clients_evaluates_a_seeded_sample(sentiment_file, tmp_path):
    sim = _sim(sentiment_file, tmp_path / "run", "disk", "fed.method=sfed-lora", "eval.clients=3", "fed.rounds=2")
    sim.run()
    records = rundir.records(tmp_path / "run")
    chosen = records[0]["eval"]["evaluated_clients"]
    assert len(chosen) == 3 and chosen == sorted(chosen) and all(r["eval"]["evaluated_clients"] == chosen
                                                                 for r in records)
    assert len(records[-1]["eval"]["personal"]["test"]["clients"]) == 3
    again = _sim(sentiment_file, tmp_path / "again", "memory", "fed.method=sfed-lora", "eval.clients=3",
                 "fed.rounds=2")
    assert again.evaluated == chosen


def test_auto_store_and_what_disk_refuses():
    cfg = load_config(None, ["fed.clients=1000", "fed.clients_per_round=10"])
    assert client_store(cfg, check(cfg)) == "disk"
    assert client_store(load_config(None, ["fed.clients=999"]), check(cfg)) == "memory"
    flora = load_config(None, ["fed.clients=1000", "fed.method=flora"])
    assert client_store(flora, check(flora)) == "memory"
    with pytest.raises(SfedloraError, match="fed.client_store=memory"):
        check(load_config(None, ["fed.method=flora", "fed.client_store=disk"]))
    summary = json.dumps(load_config(None, ["fed.client_store=disk"]).fed.client_store)
    assert summary == '"disk"'


def test_the_console_describes_twenty_clients_and_sums_up_the_rest():
    from sfedlora.runtime.records import describe_run
    from sfedlora.runtime.resolve import resolve

    cfg = load_config(None, ["fed.clients=25"])
    r = resolve(cfg, check(cfg), [5] * 25)
    descriptions = [{"client": c, "train": 5 + c, "val": 1, "test": 1, "histogram": {}} for c in range(25)]
    lines = describe_run("sfed-lora", r, cfg, descriptions)
    assert len(lines) == 1 + 20 + 1 and lines[20].startswith("  client 19: train    24")
    assert lines[-1] == "  ... 5 more clients (partitions.json): train sizes 25 to 29, median 27"
    assert "on disk" not in lines[0]
    assert "client states on disk" in describe_run("sfed-lora", replace(r, client_store="disk"), cfg, [])[0]


def test_a_damaged_client_file_stops_the_run_and_resume_can_redraw_that_client(sentiment_file, tmp_path, capsys):
    """One flipped byte in a client's state file: both checkpoints link the same file, so no copy is intact.
    The resume stops naming the client; `--resume --redraw-damaged` starts it again from its seed, with a
    warning, and the round's record lists it."""
    from sfedlora.cli import main
    from sfedlora.runtime.statefile import file_name
    from sfedlora.simulation.clientstore import FOLDER

    out = tmp_path / "run"
    killed_in_round(_sim(sentiment_file, out, "disk", "fed.rounds=4"), 3)
    damaged = next(c for c in range(8) if (out / FOLDER / file_name(c)).exists())
    path = out / FOLDER / file_name(damaged)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # the same inode as the checkpoints' links: every copy is damaged
    path.write_bytes(bytes(raw))
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert f"client {damaged}'s state file is damaged" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=f"client {damaged}'s state file is damaged.*starts again from its seed"):
        assert main(["run", "--resume", str(out), "--quiet", "--redraw-damaged"]) == 0
    recs = rundir.records(out)
    assert [r["round"] for r in recs] == [1, 2, 3, 4] and rundir.finished(out)
    assert [r.get("redrawn_clients") for r in recs if r.get("redrawn_clients")] == [[damaged]]
    assert main(["run", "--redraw-damaged", "--out", str(tmp_path / "x")]) == 2  # only with --resume
