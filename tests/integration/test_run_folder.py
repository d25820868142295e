"""The run folder: one writer at a time, resume refuses what it cannot continue exactly, a torn last record
is dropped, sweeps never mistake another run for theirs, exports never destroy."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from conftest import lock_held_elsewhere

from sfedlora.cli import main
from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, lock, rundir, statefile

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

BASE = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "train.batch_size=4", "lora.rank=4",
        "eval.max_examples=8", "fed.local_steps=2"]


def _run(sentiment_file, out, *extra):
    return main(["run", f"data.source={sentiment_file}", *BASE, *extra, "--out", str(out), "--quiet"])


def test_a_second_writer_is_refused_naming_the_holder(sentiment_file, tmp_path, capsys):
    out = tmp_path / "run"
    with lock_held_elsewhere(out) as pid:
        assert _run(sentiment_file, out, "fed.rounds=1") == 2
        assert f"in use by another sfedlora process (PID {pid})" in capsys.readouterr().err
        assert main(["run", "--resume", str(out)]) == 2
        assert f"PID {pid}" in capsys.readouterr().err
    assert not (out / rundir.METRICS).exists()  # nothing was written by the refused writers
    assert _run(sentiment_file, out, "fed.rounds=1") == 0  # the kernel dropped the lock with its holder


def test_the_lock_is_taken_in_process_too(tmp_path):
    with lock.hold(tmp_path / "f"):
        with pytest.raises(SfedloraError, match=f"PID {os.getpid()}"):
            with lock.hold(tmp_path / "f"):
                pass
    with lock.hold(tmp_path / "f"):  # released
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(SfedloraError, match="is a file"):
        with lock.hold(tmp_path / "file"):
            pass


def _interrupt_after_round_1(out):
    """What a crash in round 2's write leaves: the round-1 checkpoint, records 0-1 and a torn line."""
    for name in (rundir.SUMMARY, rundir.ADAPTERS):
        (out / name).unlink()
    os.replace(out / checkpoint.PREVIOUS, out / checkpoint.NAME)
    lines = (out / rundir.METRICS).read_text().splitlines()
    (out / rundir.METRICS).write_text("\n".join(lines[:2]) + "\n" + lines[2][:37])


def test_a_torn_last_record_is_dropped_on_resume(sentiment_file, tmp_path):
    out = tmp_path / "run"
    assert _run(sentiment_file, out, "fed.rounds=2") == 0
    first = rundir.records(out)
    _interrupt_after_round_1(out)
    assert [r["round"] for r in rundir.records(out)] == [0, 1]  # the torn tail is not a record
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = rundir.records(out)
    assert [r["round"] for r in again] == [0, 1, 2]
    assert again[2]["eval"]["personal"] == first[2]["eval"]["personal"]
    (out / rundir.METRICS).write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(SfedloraError, match="metrics.jsonl:2 is not a JSON record"):
        rundir.records(out)


@pytest.mark.parametrize("change", ["edit", "shrink"])
def test_resume_refuses_changed_data(change, sentiment_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(sentiment_file, out, "fed.rounds=2") == 0
    _interrupt_after_round_1(out)
    rows = sentiment_file.read_text().splitlines()
    if change == "edit":
        rows[5] = rows[5].replace("item 5", "item 6")  # one record changed, the same size
    else:
        rows = rows[:-30]
    sentiment_file.write_text("\n".join(rows) + "\n")
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be resumed here: " in err and "start a new run" in err and "Traceback" not in err
    assert ("data_fingerprint was" in err) and (change == "edit" or "sizes was" in err)


def test_a_sweep_refuses_a_finished_run_made_with_other_settings(sentiment_file, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "quick": {
        "set": {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in [f"data.source={sentiment_file}", *BASE])},
        "grid": {"seed": [0]}}}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "fed.rounds=1", "--out", str(out)]) == 0
    stamp = (out / "seed=0" / rundir.SUMMARY).stat().st_mtime_ns
    assert main(["sweep", str(spec), "fed.rounds=1", "--out", str(out)]) == 0  # same settings: skipped
    assert (out / "seed=0" / rundir.SUMMARY).stat().st_mtime_ns == stamp
    # settings that only decide what a run writes leave it finished
    assert main(["sweep", str(spec), "fed.rounds=1", "keep_adapters=false", "tracking=[tensorboard]",
                 "--out", str(out)]) == 0
    assert (out / "seed=0" / rundir.SUMMARY).stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(["sweep", str(spec), "fed.rounds=2", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("other")
    assert main(["sweep", str(spec), "fed.rounds=2", "checkpoint_every=0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fed.rounds: 1 there, 2 planned" in err and "checkpoint_every" not in err
    assert (out / "seed=0" / rundir.SUMMARY).stat().st_mtime_ns == stamp  # the finished run is untouched


def test_export_never_destroys(sentiment_file, tmp_path, capsys):
    run, exp = tmp_path / "run", tmp_path / "exp"
    assert _run(sentiment_file, run, "fed.rounds=1") == 0
    args = ["export", str(run), "--client", "1", "--out", str(exp), "--no-merged"]
    assert main(args) == 0
    (exp / "stale.txt").write_text("the earlier export's file")
    assert main(args) == 2 and "not empty" in capsys.readouterr().err
    assert (exp / "stale.txt").exists()
    assert main([*args, "--force"]) == 0  # an earlier export (it is marked as one) may be replaced
    assert sorted(p.name for p in exp.iterdir()) == ["adapter", "sfedlora-export.json"]  # whole: no stale file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]  # no temporary folder left
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(run), "--client", "0", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_run_without_kept_adapters_writes_none_and_says_so_on_export(sentiment_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(sentiment_file, run, "fed.rounds=1", "keep_adapters=false") == 0
    assert not list(run.glob("adapters*")) and rundir.records(run)[-1]["round"] == 1
    capsys.readouterr()
    for best in ([], ["--best"]):
        assert main(["export", str(run), "--client", "0", "--out", str(tmp_path / "exp"), *best]) == 2
        assert "was run with keep_adapters=false" in capsys.readouterr().err


def test_a_flower_run_exports_from_its_node_directory(sentiment_file, tmp_path, capsys):
    """A Flower run folder has no adapters file: export reads the client's final state on its node."""
    run = tmp_path / "run"
    assert _run(sentiment_file, run, "fed.rounds=1") == 0
    saved = rundir.load_adapters(run)
    raw = yaml.safe_load((run / rundir.CONFIG).read_text())  # the same run as Flower would record it
    raw["resolved"] |= {"engine": "flower", "run_key": "abc123"}
    (run / rundir.CONFIG).write_text(yaml.safe_dump(raw))
    (run / rundir.ADAPTERS).unlink()
    args = ["export", str(run), "--client", "1", "--no-merged", "--out"]
    assert main([*args, str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert "--node-dir" in err and "abc123/client-<i>.safetensors" in err and "--resume" not in err
    nodes = tmp_path / "node"
    (nodes / "abc123").mkdir(parents=True)
    statefile.save(nodes / "abc123" / "client-1.safetensors", {"adapters": saved["states"][1], "round": 1})
    assert main([*args, str(tmp_path / "e2"), "--node-dir", str(nodes)]) == 0
    straight = json.loads((tmp_path / "e2" / "adapter" / "sfedlora.json").read_text())
    assert straight["client"] == 1 and straight["rank"] == 4
    assert main([*args, str(tmp_path / "e3"), "--node-dir", str(tmp_path)]) == 2
    assert "client-1.safetensors does not exist" in capsys.readouterr().err


def test_resume_of_a_flower_run_is_refused(sentiment_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(sentiment_file, run, "fed.rounds=1") == 0
    raw = yaml.safe_load((run / rundir.CONFIG).read_text())
    raw["resolved"]["engine"] = "flower"
    (run / rundir.CONFIG).write_text(yaml.safe_dump(raw))
    (run / rundir.SUMMARY).unlink()
    assert main(["run", "--resume", str(run)]) == 2
    assert "in-process runner cannot resume it" in capsys.readouterr().err


def test_a_run_partitioned_by_a_natural_key(tmp_path, capsys):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"{'good' if i % 2 else 'bad'} thing {i}", "sentiment":
                                        "pos" if i % 2 else "neg", "author": f"u{i % 3}"}) + "\n" for i in range(90)))
    out = tmp_path / "run"
    assert main(["run", f"data.source={path}", *BASE, "data.partition=by_field", "data.partition_by=author",
                 "fed.clients=3", "fed.rounds=1", "--out", str(out), "--quiet"]) == 0
    sizes = json.loads((out / "partitions.json").read_text())
    assert [s["train"] + s["val"] + s["test"] for s in sizes] == [30, 30, 30]


def test_export_best_is_the_best_rounds_model(sentiment_file, tmp_path, capsys):
    """adapters.best.safetensors holds every client's adapters at the best-on-validation round: they equal a
    run stopped at that round, and export --best writes that model."""
    run = tmp_path / "run"
    assert _run(sentiment_file, run, "fed.rounds=4", "train.lr=0.05") == 0
    best = rundir.summary(run)["personal"]["best"]["round"]
    saved = rundir.load_adapters(run, best=True)
    assert saved["round"] == best >= 1
    assert _run(sentiment_file, tmp_path / "short", f"fed.rounds={best}", "train.lr=0.05") == 0
    for a, b in zip(saved["states"], rundir.load_adapters(tmp_path / "short")["states"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(run), "--client", "0", "--best", "--no-merged", "--out", str(tmp_path / "e")]) == 0
    meta = json.loads((tmp_path / "e" / "adapter" / "sfedlora.json").read_text())
    assert meta["round"] == f"{best} (best on validation)"


def test_export_round_exports_any_kept_round(sentiment_file, tmp_path, capsys):
    """keep_round_adapters keeps every checkpointed round's adapters: round 2 of a 3-round run equals a run
    stopped at round 2, export --round 2 writes that model, and a round not kept is refused, naming the kept
    ones."""
    run = tmp_path / "run"
    assert _run(sentiment_file, run, "fed.rounds=3", "train.lr=0.05", "keep_round_adapters=true") == 0
    assert rundir.kept_rounds(run) == [0, 1, 2, 3]  # round 0: the init (B = 0)
    assert _run(sentiment_file, tmp_path / "short", "fed.rounds=2", "train.lr=0.05") == 0
    kept = rundir.load_adapters(run, rnd=2)
    assert kept["round"] == 2
    for a, b in zip(kept["states"], rundir.load_adapters(tmp_path / "short")["states"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(run), "--client", "1", "--round", "2", "--no-merged", "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "adapter" / "sfedlora.json").read_text())["round"] == 2
    assert main(["export", str(run), "--client", "1", "--round", "5", "--out", str(tmp_path / "f")]) == 2
    assert "kept no adapters for round 5: it kept rounds 0, 1, 2, 3" in capsys.readouterr().err
    assert main(["export", str(run), "--client", "1", "--round", "1", "--best", "--out", str(tmp_path / "f")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "short"), "--client", "0", "--round", "1", "--out", str(tmp_path / "f")]) == 2
    assert "without keep_round_adapters=true" in capsys.readouterr().err


def _stopped_at_round_3(sentiment_file, out):
    """A finished 3-round run turned into one stopped after round 3's checkpoint (newest: round 3, previous:
    round 2); returns its records as the uninterrupted run wrote them."""
    assert _run(sentiment_file, out, "fed.rounds=3") == 0
    for name in (rundir.SUMMARY, rundir.ADAPTERS):
        (out / name).unlink()
    return rundir.records(out)


def test_a_checkpoint_ahead_of_the_records_falls_back_and_the_lost_record_is_recomputed(sentiment_file, tmp_path):
    """Round 3's record torn by a crash after round 3's checkpoint: the resume goes back to round 2's checkpoint
    and computes round 3 again (before: it went on from round 4, round 3's record was gone without a word)."""
    out = tmp_path / "run"
    first = _stopped_at_round_3(sentiment_file, out)
    lines = (out / rundir.METRICS).read_text().splitlines()
    (out / rundir.METRICS).write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    with pytest.warns(UserWarning, match=r"no record of round\(s\) \[3\].*resuming from the previous checkpoint"):
        assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = rundir.records(out)
    assert [r["round"] for r in again] == [0, 1, 2, 3]
    assert again[3]["eval"]["personal"] == first[3]["eval"]["personal"]
    assert rundir.summary(out)["personal"]["last"]["round"] == 3


def test_records_missing_before_both_checkpoints_are_a_clear_error(sentiment_file, tmp_path, capsys):
    out = tmp_path / "run"
    _stopped_at_round_3(sentiment_file, out)
    lines = (out / rundir.METRICS).read_text().splitlines()
    (out / rundir.METRICS).write_text("\n".join(lines[:2]) + "\n")  # rounds 2 and 3 lost
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "no record of round(s) [2, 3]" in err and "Traceback" not in err
    assert (out / checkpoint.NAME).exists() and not (out / checkpoint.DAMAGED).exists()  # nothing set aside


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda s: s.update(round=-2), "its round -2 is outside 0..3"),
    (lambda s: s.update(round=99999), "its round 99999 is outside 0..3"),
    (lambda s: s.update(states=s["states"][:1]), "it holds 1 clients' states, the run has 2"),
    (lambda s: s.update(samplers=s["samplers"][:1]), "it holds 1 clients' samplers, the run has 2"),
    (lambda s: s["states"][0].update({k: v[:, :1] for k, v in s["states"][0].items() if k.endswith("lora_A")}),
     "client 0's .*lora_A is"),
    (lambda s: s["samplers"][1].clear(), "cannot be resumed from: ValueError"),
    (lambda s: s.update(torch_rng=[1, 2]), "cannot be resumed from: TypeError"),
])
def test_an_edited_checkpoint_that_passes_its_checksum_is_refused_for_the_previous_one(edit, reason, sentiment_file,
                                                                                       tmp_path):
    """A checkpoint whose checksum was recomputed over edited content (before: tracebacks, or a negative round,
    missing clients or wrong shapes trained on) is checked against the run, the previous one is used, and the
    rejected one is set aside so that the next checkpoint does not rotate it over the good one."""
    out = tmp_path / "run"
    first = _stopped_at_round_3(sentiment_file, out)
    (out / rundir.METRICS).write_text("".join(json.dumps(r) + "\n" for r in first[:3]))  # records 0-2
    snap = statefile.load(out / checkpoint.PREVIOUS)  # round 2's, edited into the newest
    edit(snap)
    statefile.save(out / checkpoint.NAME, snap)  # a valid checksum over the edited content
    with pytest.warns(UserWarning, match=reason):
        assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = rundir.records(out)
    assert [r["round"] for r in again] == [0, 1, 2, 3]
    assert again[3]["eval"]["personal"] == first[3]["eval"]["personal"]
    assert (out / checkpoint.DAMAGED).exists()
    assert statefile.load(out / checkpoint.PREVIOUS)["round"] == 2  # the good one kept, not the edited one


def test_resume_of_an_empty_folder_is_refused_without_leaving_anything(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--resume", str(empty)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # before: a stray .lock


def test_a_refused_flora_checkpoint_leaves_no_update_in_the_base(sentiment_file, tmp_path):
    """FLoRA merges updates into the base weights as a checkpoint is restored: a newest checkpoint refused after
    that step (its RNG state edited) must not leave round 1's update in W0 when the round-0 one is used."""
    out = tmp_path / "run"
    assert _run(sentiment_file, out, "fed.rounds=1", "fed.method=flora") == 0
    first = rundir.records(out)
    for name in (rundir.SUMMARY, rundir.ADAPTERS):
        (out / name).unlink()
    snap = statefile.load(out / checkpoint.NAME)
    assert snap["round"] == 1 and snap["merged"]  # round 1's update, merged into the base
    snap["torch_rng"] = [1, 2]
    statefile.save(out / checkpoint.NAME, snap)
    with pytest.warns(UserWarning, match="cannot be resumed from: TypeError"):
        assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = rundir.records(out)
    assert again[1]["eval"]["personal"] == first[1]["eval"]["personal"]
