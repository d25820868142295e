"""An export never deletes a run: --force replaces only an earlier export (a folder the export marked as one),
and an --out that is, holds or lies inside a run folder is refused; exports follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

from sfedlora.cli import main
from sfedlora.runtime import rundir
from sfedlora.tools.export import MARK

ARGS = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.clients=2", "fed.rounds=1", "fed.local_steps=2",
        "train.batch_size=4", "eval.max_examples=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """P/a and P/b, two finished runs side by side."""
    parent = tmp_path_factory.mktemp("P")
    data = parent.parent / "reviews.jsonl"
    data.write_text("".join(f'{{"sentence": "{w} {w} item {i}", "sentiment": "{w}"}}\n'
                            for i, w in enumerate(["good", "bad", "meh"] * 60)))
    for name in ("a", "b"):
        assert main(["run", f"data.source={data}", *ARGS, "--out", str(parent / name), "--quiet"]) == 0
    return parent


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["parent", "run", "inside"])
def test_force_never_replaces_or_enters_a_run(runs, where, capsys):
    before = {name: snapshot(runs / name) for name in ("a", "b")}
    out = {"parent": runs, "run": runs / "a", "inside": runs / "a" / "exported"}[where]
    assert main(["export", str(runs / "a"), "--client", "0", "--out", str(out), "--force", "--no-merged"]) == 2
    err = capsys.readouterr().err
    assert {"parent": "holds the run", "run": "is a run folder", "inside": "inside the run"}[where] in err
    assert {name: snapshot(runs / name) for name in ("a", "b")} == before
    assert rundir.finished(runs / "a") and rundir.finished(runs / "b")


def test_force_replaces_an_earlier_export_and_nothing_else(runs, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(runs / "a"), "--client", "0", "--out", str(out), "--no-merged"]) == 0
    assert (out / MARK).is_file()
    assert main(["export", str(runs / "a"), "--client", "1", "--out", str(out), "--no-merged", "--force"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(runs / "a"), "--client", "0", "--out", str(mine), "--no-merged", "--force"]) == 2
    assert "not an export" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"


def test_an_out_that_is_a_symbolic_link_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(runs / "a"), "--client", "0", "--out", str(out), "--no-merged"]) == 0
    (tmp_path / "link").symlink_to(out)
    assert main(["export", str(runs / "a"), "--client", "0", "--out", str(tmp_path / "link"), "--no-merged",
                 "--force"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err and (out / MARK).exists()


def test_an_export_follows_the_umask(runs, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "exp"
        assert main(["export", str(runs / "b"), "--client", "0", "--out", str(out), "--no-merged"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o644}
