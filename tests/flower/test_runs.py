"""sfedlora on Flower, whole runs through the real ClientApp on an in-process Grid: the same records and
adapters as the in-process runner, hostile replies rejected, B never sent, restarts, DP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from flower_grid import LocalGrid, node_states
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict

from sfedlora.config import load_config
from sfedlora.errors import SfedloraError
from sfedlora.flower.client_app import app as client_app
from sfedlora.flower.server import FlowerRun
from sfedlora.flower.settings import ServerSettings
from sfedlora.runtime.records import client_value
from sfedlora.simulation import Simulation
from sfedlora.tools.report import build_report

pytestmark = pytest.mark.slow  # whole runs: `make test-fast` leaves them out

TINY = ["model.name=tiny-bert", "model.precision=fp32", "data.task=classification", "data.text_field=sentence",
        "data.label_field=sentiment", "data.partition=iid", "fed.rounds=2", "fed.local_steps=2",
        "train.batch_size=4", "eval.batch_size=16", "lora.rank=4", "eval.global_model=false", "train.group_size=1"]


STATS = json.dumps({"loss": 1.0, "grad_norm_A": 0.1, "grad_norm_B": 0.2, "out_mean": 0.0, "out_var": 0.0,
                    "grad_norm_A_steps": [0.1], "grad_norm_B_steps": [0.2]})


def tiny(sentiment_file, clients=3, *extra):
    return load_config(None, [f"data.source={sentiment_file}", *TINY, f"fed.clients={clients}", *extra])


def run_both_and_compare_adapters(cfg, tmp_path) -> Path:
    """The config on Flower (in-process Grid) and in the in-process runner: every node's final adapters equal
    the runner's. Returns the Flower run folder."""
    out = tmp_path / "flower"
    FlowerRun(cfg, out, echo=lambda s: None).run(LocalGrid(client_app, cfg.fed.clients, str(tmp_path / "nodes")))
    sim = Simulation(cfg, tmp_path / "inproc", echo=lambda s: None, progress=False)
    sim.run()
    for p, state in enumerate(node_states(tmp_path / "nodes", out, cfg.fed.clients)):
        assert state.keys() == sim.states[p].keys()
        for k in state:
            torch.testing.assert_close(state[k], sim.states[p][k], rtol=1e-5, atol=1e-6)
    return out


TIMINGS = {"train_s", "eval_s", "wall_s", "flower", "server_opt_s"}


def close(a, b, path="record"):
    """Equal structure; numbers equal to float32 training noise."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(a)} != {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6, nan_ok=True), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize(("method", "extra", "simulation_only"), [
    ("fedit", [], set()),
    ("sfed-lora", ["fed.clients_per_round=2", "fed.rounds=3"], {"energy_beyond_rmin", "effective_rank"}),
    ("raflora", ["lora.ranks=[2,4,8]", "fed.clients_per_round=2", "fed.rounds=3"], set()),
    ("sfed-lora", ["lora.scaling=adaptive", "fed.rounds=3"], {"energy_beyond_rmin", "effective_rank"}),
    ("ffa-lora", [], {"energy_beyond_rmin", "effective_rank"}),
    ("fedsa-lora", ["fed.clients_per_round=2", "fed.rounds=3"], {"energy_beyond_rmin", "effective_rank"}),
    ("fedsa-rslora", [], {"energy_beyond_rmin", "effective_rank"}),
    ("rolora", ["fed.rounds=3"], {"energy_beyond_rmin", "effective_rank"}),
    ("hetlora", ["lora.ranks=[2,4,8]", "fed.clients_per_round=2", "fed.rounds=3"], set()),
    ("flexlora", ["lora.ranks=[2,4,8]"], set()),
    ("flora", ["lora.ranks=[2,4,8]", "fed.clients_per_round=2", "fed.rounds=3"], set()),
    ("sfed-lora", ["fed.server_optimizer=adam", "fed.server_lr=0.05", "fed.rounds=3"],
     {"energy_beyond_rmin", "effective_rank"}),
    ("fedit", ["fed.server_optimizer=avgm", "fed.server_lr=0.7", "fed.clients_per_round=2", "fed.rounds=3"], set()),
    ("sfed-lora", ["lora.init=shared", "fed.dp_clipping_norm=0.05", "fed.dp_noise_multiplier=0.3",
                   "fed.server_optimizer=adam"], {"energy_beyond_rmin", "effective_rank"}),
], ids=["fedit", "sfed-lora-partial", "raflora", "sfed-lora-adaptive", "ffa-lora", "fedsa-lora", "fedsa-rslora",
        "rolora", "hetlora", "flexlora", "flora", "sfed-lora-server-adam", "fedit-server-avgm", "sfed-lora-dp"])
def test_both_runners_record_the_same_rounds(method, extra, simulation_only, sentiment_file, tmp_path):
    """One protocol, two runners: every recorded field of every round is the same but the timings (and
    Flower's wire statistics), and the final adapters too, for all ten methods (FLoRA's nodes merge every round's
    update they have not merged, sent with their next message, and restart as the in-process runner's clients do).
    The only field one runner has and the other has not: the spectrum of an update that sends one factor (FedSA's
    A, FFA-LoRA's and RoLoRA's B), which needs every client's other factor (the in-process runner holds them; a
    Flower server never sees them). A server optimizer's step and server-side DP are the same Server code in both
    (the last three)."""
    cfg = tiny(sentiment_file, 3, f"fed.method={method}", *extra)
    out = run_both_and_compare_adapters(cfg, tmp_path)
    flower = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    inproc = [json.loads(x) for x in (tmp_path / "inproc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in flower] == [r["round"] for r in inproc] == list(range(cfg.fed.rounds + 1))
    for f, i in zip(flower, inproc, strict=True):
        assert set(i) - set(f) - TIMINGS == (simulation_only if f["round"] else set())
        close({k: v for k, v in f.items() if k not in TIMINGS},
              {k: v for k, v in i.items() if k not in TIMINGS | simulation_only}, f"round {f['round']}")
    ours, theirs = json.loads((out / "summary.json").read_text()), json.loads((tmp_path / "inproc" / "summary.json")
                                                                              .read_text())
    for key in ("personal", "metric", "ranks", "gammas", "n_scaling", "scaling", "init", "task", "targets",
                "precision", "device", "sizes", "model", "revision"):
        close(ours[key], theirs[key], key)


def test_flower_run_equals_in_process_runner(sentiment_file, tmp_path):
    out = run_both_and_compare_adapters(tiny(sentiment_file), tmp_path)
    ours = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (tmp_path / "inproc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in ours] == [0, 1, 2]
    for a, b in zip(ours, theirs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, nan_ok=True) if a["round"] else True
        assert a["eval"]["personal"]["test"]["accuracy"] == pytest.approx(b["eval"]["personal"]["test"]["accuracy"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["personal"]["last"]["round"] == 2


@pytest.mark.parametrize("method", ["raflora", "hetlora", "sfed-lora"])
def test_heterogeneous_ranks_with_one_client_per_round_equal_the_in_process_runner(method, sentiment_file, tmp_path):
    """Ranks [2, 4, 8], one client per round: the server's stored update keeps the rows a round did not
    send, nodes keep theirs, and the final adapters equal the in-process runner's."""
    cfg = tiny(sentiment_file, 3, "lora.ranks=[2,4,8]", "fed.clients_per_round=1", "fed.rounds=4",
               f"fed.method={method}")
    run_both_and_compare_adapters(cfg, tmp_path)


def test_flower_run_records_the_precision_its_nodes_resolved(sentiment_file, tmp_path, monkeypatch):
    """model.precision=auto is resolved on each node: the run folder records what it became (before: 'auto')."""
    import warnings

    import yaml

    from sfedlora.runtime import resolve

    monkeypatch.setattr(resolve, "cpu_flags", lambda: "flags : avx2 avx512f avx512_bf16")
    cfg = tiny(sentiment_file, 2, "model.precision=auto", "fed.rounds=1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FlowerRun(cfg, tmp_path / "run", echo=lambda s: None).run(LocalGrid(client_app, 2, str(tmp_path / "nodes")))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resolved["precision"] == "bf16" and resolved["device"] == "cpu"


def test_b_never_leaves_a_client(sentiment_file, tmp_path):
    cfg = tiny(sentiment_file)
    seen: list[str] = []

    def spy(partition, reply, msg):
        for name, record in reply.content.array_records.items():
            seen.extend(f"{name}:{k}" for k in record)
        return reply

    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=spy)
    FlowerRun(cfg, tmp_path / "run", echo=lambda s: None).run(grid)
    sent = [f"{n}:{k}" for m in grid.sent for n, rec in m.content.array_records.items() for k in rec]
    assert any(k.endswith(".lora_A") for k in seen) and any(k.endswith(".lora_A") for k in sent)
    assert not any(k.endswith(".lora_B") for k in seen + sent)


def _corrupt(kind):
    def tamper(partition, reply, msg):
        if partition != 1 or "upload" not in reply.content:
            return reply
        if kind == "drop":
            return None
        if kind == "error":
            return Message(Error(code=0, reason="out of memory"), reply_to=msg)
        content = reply.content
        upload = content["upload"].to_torch_state_dict()
        key = next(k for k in upload if k.endswith(".lora_A"))
        if kind == "shape":
            upload[key] = torch.zeros(7, 3)
        elif kind == "keys":
            upload["extra.weight"] = torch.zeros(2)
        elif kind == "nan":
            upload[key] = torch.full_like(upload[key], math.nan)
        content["upload"] = ArrayRecord(dict(upload))
        if kind == "count":
            content["metrics"] = MetricRecord({"setup_s": 0.0})
        return reply
    return tamper


@pytest.mark.parametrize("kind, reason", [("shape", "wrong shape"), ("keys", "unexpected keys"),
                                          ("nan", "non-finite values"), ("count", "example count"),
                                          ("drop", "no reply within"), ("error", "client error: out of memory")])
def test_malformed_replies_are_rejected_and_the_round_completes(sentiment_file, tmp_path, kind, reason):
    cfg = tiny(sentiment_file)
    lines: list[str] = []
    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=_corrupt(kind))
    summary = FlowerRun(cfg, tmp_path / "run", echo=lines.append).run(grid)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        assert r["n_averaged"] == 2 and [e["client"] for e in r["excluded"]] == [1]
        assert reason in r["excluded"][0]["reason"]
        assert client_value(r["train_loss"], 1) is None and client_value(r["train_loss"], 0) is not None
    assert any("excludes client 1: " in line and reason in line for line in lines)
    assert summary["personal"]["last"]["round"] == 2


def test_a_node_whose_library_warned_of_incorrect_results_stops_the_run(sentiment_file, tmp_path):
    """The error a node's local training raises on such a warning (errors.incorrect_results_are_errors) is not a
    client to leave out, as a crash is: the run stops, as the in-process runner does."""
    from sfedlora.errors import VOIDED

    def warned(partition, reply, msg):
        if partition != 1 or "upload" not in reply.content:
            return reply
        return Message(Error(code=0, reason=f"SfedloraError: round 1's local training stopped: {VOIDED}, so they "
                                            "cannot be recorded: UserWarning: ... silently incorrect behavior."),
                       reply_to=msg)

    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=warned)
    with pytest.raises(SfedloraError, match=r"client 1.*results may be incorrect"):
        FlowerRun(tiny(sentiment_file), tmp_path / "run", echo=lambda s: None).run(grid)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_node_that_does_not_reply_flags_partial_rounds_and_shortens_the_timeout(sentiment_file, tmp_path):
    cfg = tiny(sentiment_file, 3, "fed.rounds=3")
    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=_corrupt("drop"))
    summary = FlowerRun(cfg, tmp_path / "run", echo=lambda s: None).run(grid)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["flower"]["no_reply"] for r in records[1:]] == [[1], [1], [1]]
    assert records[0]["eval"]["evaluated_clients"] == [0, 2]  # round 0 was evaluated in the dropped exchange
    assert summary["partial_rounds"] == [0, 1, 2, 3]
    timeouts = [r["flower"]["timeout_s"] for r in records[1:]]
    assert timeouts[0] == 600.0 and timeouts[1] == timeouts[2] == 60.0  # auto: after the first, 4 x a round, >= 60
    build_report([tmp_path / "run"], tmp_path / "report")
    assert "Partial rounds" in (tmp_path / "report" / "report.md").read_text()


def test_too_few_acceptable_replies_stop_the_run_clearly(sentiment_file, tmp_path):
    cfg = tiny(sentiment_file, 3, "fed.min_clients=3")
    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=_corrupt("nan"))
    with pytest.raises(SfedloraError, match=r"round 1: only 2 acceptable uploads \(fed.min_clients = 3\).*client 1"):
        FlowerRun(cfg, tmp_path / "run", echo=lambda s: None).run(grid)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_restarted_node_continues_from_its_directory(sentiment_file, tmp_path):
    """context.state lost between rounds (a SuperNode restart): the node reads its file and the run ends
    exactly where an uninterrupted one does."""
    cfg = tiny(sentiment_file)

    def restart(partition, reply, msg):
        if reply.metadata.message_type == "train":
            grid.contexts[1000 + partition].state = RecordDict()
        return reply

    grid = LocalGrid(client_app, 3, str(tmp_path / "nodes"), tamper=restart)
    FlowerRun(cfg, tmp_path / "run", echo=lambda s: None).run(grid)
    plain = LocalGrid(client_app, 3, str(tmp_path / "nodes2"))
    FlowerRun(cfg, tmp_path / "run2", echo=lambda s: None).run(plain)
    for a, b in zip(node_states(tmp_path / "nodes", tmp_path / "run", 3),
                    node_states(tmp_path / "nodes2", tmp_path / "run2", 3), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_a_new_run_on_a_reused_folder_never_sees_the_previous_runs_state(sentiment_file, tmp_path):
    """Node state is keyed by a run id drawn at run start: a second run into the same --out on the same nodes
    starts from the untrained base (its round 0 equals the first run's), and a finished run leaves on each
    node only its client's final adapters."""
    import shutil

    from sfedlora.runtime import statefile

    cfg, out, nodes = tiny(sentiment_file), tmp_path / "run", tmp_path / "nodes"
    FlowerRun(cfg, out, echo=lambda s: None).run(LocalGrid(client_app, 3, str(nodes)))
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)
    FlowerRun(cfg, out, echo=lambda s: None).run(LocalGrid(client_app, 3, str(nodes)))
    second = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert first[0]["eval"]["personal"] == second[0]["eval"]["personal"]
    assert first[-1]["eval"]["personal"] != second[0]["eval"]["personal"]  # training changed the first run's models
    keys = sorted(p.name for p in nodes.iterdir() if p.name != "partitions")  # partitions: the data draw's cache
    assert len(keys) == 2
    for key in keys:
        for c in range(3):
            assert set(statefile.load(nodes / key / f"client-{c}.safetensors")) == {"adapters", "round"}


def test_server_side_dp_is_a_run_config_key_the_flower_runner_honours(sentiment_file, tmp_path):
    cfg = tiny(sentiment_file, 3, "lora.init=shared", "fed.dp_clipping_norm=0.1", "fed.dp_noise_multiplier=0.5")
    FlowerRun(cfg, tmp_path / "run", ServerSettings(), echo=lambda s: None).run(
        LocalGrid(client_app, 3, str(tmp_path / "nodes")))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dp"] == {"noise_multiplier": 0.5, "clipping_norm": 0.1}
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["dp"]["noise_norm"] > 0 and len(r["dp"]["update_norm"]) == 3 for r in records[1:])
    with pytest.raises(SfedloraError, match="lora.init=shared"):
        FlowerRun(tiny(sentiment_file, 3, "fed.dp_clipping_norm=0.1"), tmp_path / "x", ServerSettings())
    with pytest.raises(SfedloraError, match="same factors every round: use it with .*, not flora"):
        FlowerRun(tiny(sentiment_file, 3, "fed.method=flora", "lora.init=shared", "fed.dp_clipping_norm=0.1"),
                  tmp_path / "y", ServerSettings())


def test_both_runners_write_the_same_generation_samples(tmp_path):
    """Instruction runs decode each client's first eval.samples test prompts every evaluated round into
    samples.jsonl, beside the reference; a Flower node sends its completions with its evaluation, and both
    runners write the same lines."""
    data = tmp_path / "inst.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Repeat {i}:", "response": f"{i} {i}"}) + "\n" for i in range(40)))
    cfg = load_config(None, [f"data.source={data}", "data.task=instruction", "model.name=tiny-llama",
                             "model.precision=fp32", "data.partition=iid", "fed.clients=2", "fed.rounds=2",
                             "fed.local_steps=2", "train.batch_size=4", "train.lr=0.05", "eval.max_examples=4",
                             "eval.samples=2", "eval.sample_tokens=6", "eval.global_model=false",
                             "train.group_size=1"])
    out = run_both_and_compare_adapters(cfg, tmp_path)
    flower = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    inproc = [json.loads(x) for x in (tmp_path / "inproc" / "samples.jsonl").read_text().splitlines()]
    assert [(s["round"], s["client"], s["prompt_index"]) for s in inproc] == [
        (r, c, i) for r in range(3) for c in range(2) for i in range(2)]
    assert flower == inproc
    for s in inproc:  # the prompt in the run's template, the record's own response as the reference
        n = s["prompt"].split("Repeat ")[1].split(":")[0]
        assert s["prompt"].endswith("### Response:\n") and s["reference"] == f"{n} {n}"


def test_what_only_the_in_process_runner_does_is_refused_up_front(sentiment_file, tmp_path):
    for setting, match in (("eval.clients=1", "eval.clients"), ("keep_round_adapters=true", "keep_round_adapters")):
        cfg = load_config(None, [f"data.source={sentiment_file}", *TINY, "fed.clients=2", setting])
        with pytest.raises(SfedloraError, match=match):
            FlowerRun(cfg, tmp_path / "run", echo=lambda s: None)


def test_a_flora_run_on_flower_exports_the_base_its_node_merged(sentiment_file, tmp_path):
    """FLoRA's model is W0 plus every merged update: a node keeps the sum with its final adapters, and the export
    from its directory writes the same merged model as the in-process run's export."""
    import yaml
    from safetensors.torch import load_file

    from sfedlora import api
    from sfedlora.runtime import statefile
    from sfedlora.runtime.statefile import node_file

    cfg = tiny(sentiment_file, 3, "fed.method=flora", "lora.ranks=[2,4,8]", "fed.rounds=2")
    out = run_both_and_compare_adapters(cfg, tmp_path)
    api.export(out, 1, tmp_path / "from-node", node_dir=tmp_path / "nodes")
    api.export(tmp_path / "inproc", 1, tmp_path / "in-process")
    ours, theirs = (load_file(tmp_path / d / "merged" / "model.safetensors") for d in ("from-node", "in-process"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
    key = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["run_key"]
    merged = statefile.load(node_file(tmp_path / "nodes", key, 1))["merged"]
    assert merged and all(bool(d.abs().sum() > 0) for d in merged.values())  # two rounds' dW, not nothing


@pytest.mark.parametrize("keep", [8, 1], ids=["rounds", "folded-sum"])
def test_a_flora_node_that_lost_its_state_catches_up(keep, sentiment_file, tmp_path, monkeypatch):
    """A FLoRA node whose saved state is lost (a SuperNode restarted without its node directory) is left out of the
    next round with the reason, reports where its base stands, and gets every merged update it lacks with its next
    message: the rounds themselves, or (keep=1: the server folds older rounds into one fp32 sum) that sum; it then
    takes part again, and every node ends with the same merged base."""
    import shutil

    import yaml

    from sfedlora.flower import merges
    from sfedlora.runtime import statefile
    from sfedlora.runtime.statefile import node_file

    monkeypatch.setattr(merges, "KEEP", keep)
    cfg = tiny(sentiment_file, 3, "fed.method=flora", "lora.ranks=[2,4,8]", "fed.rounds=4")
    out, nodes = tmp_path / "flower", tmp_path / "nodes"

    def lose(partition, reply, msg):  # node 1 forgets everything after answering round 2
        if partition == 1 and msg.metadata.message_type == "train" and int(msg.content["config"]["round"]) == 2:
            grid.contexts[1001].state = RecordDict()
            shutil.rmtree(nodes / yaml.safe_load((out / "config.yaml").read_text())["resolved"]["run_key"])
        return reply

    grid = LocalGrid(client_app, 3, str(nodes), tamper=lose)
    FlowerRun(cfg, out, echo=lambda s: None).run(grid)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["client"] for e in records[3]["excluded"]] == [1]
    assert "its base holds the merged updates up to round 0, not 2" in records[3]["excluded"][0]["reason"]
    assert records[4]["participants"] == [0, 1, 2] and not records[4]["excluded"]
    key = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["run_key"]
    kept = [statefile.load(node_file(nodes, key, p))["merged"] for p in range(3)]
    assert kept[0] and all(k.keys() == kept[0].keys() for k in kept)
    for m in kept[0]:  # the node that caught up holds the same sum as the others, bit for bit
        assert torch.equal(kept[1][m], kept[0][m]) and torch.equal(kept[2][m], kept[0][m])


def test_a_malformed_merge_report_is_read_as_nothing_merged():
    from sfedlora.flower.merges import MergeLog
    from sfedlora.methods import get_method

    log = MergeLog(get_method("flora"), 2)
    for report in ({"merged_round": "abc"}, {}, {"merged_round": None}, {"merged_round": -3}):
        log.heard(0, report)
        assert log.merged_to[0] == 0
    log.heard(1, {"merged_round": 2})
    assert log.merged_to[1] == 2
