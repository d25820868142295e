"""sfedlora command line: a few lines per subcommand that build a config and call the library."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from sfedlora.config import builtin_configs, config_path
from sfedlora.errors import SfedloraError


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from sfedlora import api

    if args.resume:
        if args.items:
            raise SfedloraError("--resume continues a run with the config it was started with; give no CONFIG or "
                                "overrides")
        result = api.resume(args.resume, progress=not args.quiet, echo=_say, redraw_damaged=args.redraw_damaged)
        print(f"results in {args.resume}/ ({result.summary['wall_s'] if result.summary else 0:.1f} s after resuming)")
        return 0
    if args.redraw_damaged:
        raise SfedloraError("--redraw-damaged goes with --resume DIR (a run that found a damaged client state file)")
    items = list(args.items)
    name = items.pop(0) if items and "=" not in items[0] else None
    cfg = api._config(name, items)
    out = Path(args.out) if args.out else api.default_out(cfg)
    result = api.run(cfg, out=out, progress=not args.quiet, echo=_say)
    metric = result.summary["metric"] if result.summary else ""
    for scope in ("personal", "global"):
        last, best = result.metric(scope, "last"), result.metric(scope, "best")
        if last is not None and result.summary:
            print(f"{scope:>8} test {metric}: last round {result.summary[scope]['last']['round']} = {last:.4f}; "
                  f"best-on-val round {result.summary[scope]['best']['round']} = {best:.4f}")
    print(f"results in {out}/ ({result.summary['wall_s'] if result.summary else 0:.1f} s)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from sfedlora.config import load_config, to_dict
    from sfedlora.config.reference import reference

    if args.reference:
        print(reference(), end="")
        return 0
    items = list(args.items)
    name = items.pop(0) if items and "=" not in items[0] else None
    print(yaml.safe_dump(to_dict(load_config(config_path(name), items)), sort_keys=False), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sfedlora.tools.export import export

    info = export(Path(args.run), args.client, Path(args.out), merged=not args.no_merged, force=args.force,
                  node_dir=Path(args.node_dir) if args.node_dir else None, best=args.best, rnd=args.round)
    g = info["gamma"]
    gamma = f"{min(g.values()):.4g}..{max(g.values()):.4g} per module" if isinstance(g, dict) else f"{g:.6g}"
    print(f"client {info['client']}: rank {info['rank']}, gamma {gamma} ({info['scaling']}) as PEFT "
          f"lora_alpha={info['lora_alpha']:.6g}" + (" with alpha_pattern" if isinstance(g, dict) else "")
          + f", use_rslora={info['use_rslora']}")
    print(f"  {args.out}/adapter  (peft.PeftModel.from_pretrained(base, '{args.out}/adapter'))")
    if not args.no_merged:
        print(f"  {args.out}/merged   (AutoModel...from_pretrained('{args.out}/merged'), adapters merged into W0)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sfedlora.tools.harness import evaluate, report_lines

    results = evaluate(Path(args.run), args.client, [t.strip() for t in args.lm_eval.split(",") if t.strip()],
                       Path(args.include_path) if args.include_path else None, args.limit, args.batch_size,
                       args.num_fewshot, args.best, args.round, log_samples=args.log_samples,
                       node_dir=Path(args.node_dir) if args.node_dir else None)
    print("\n".join(report_lines(results, Path(args.run), args.client)))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from sfedlora.methods import describe

    print("\n".join(describe()))
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from sfedlora.data.builtin import BUILTIN, version

    for name, b in BUILTIN.items():
        installed = version(name)
        print(f"{name:<24} {b.task:<15} {b.package}=={installed or '? (missing: run make setup)'}  {b.what}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sfedlora.tools.sweep import load_spec, parse_only, plan, run_sweep, stale

    spec, _ = load_spec(args.spec, args.size)
    name = spec.get("name", Path(args.spec).stem)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / f"{name}-{args.size}"
    runs = plan(args.spec, args.size, out, list(args.overrides), parse_only(args.only))
    if args.dry_run:
        for r in runs:
            print(f"{('other' if stale(r) else 'done ') if r.done else 'todo '} {r.folder}  {' '.join(r.overrides)}")
        return 0
    run_sweep(runs)
    print(f"sweep folder: {out}/  (sfedlora report {out} --out {out}/report)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sfedlora.tools.report import build_report

    dirs = [Path(d) for d in args.dirs]
    out = Path(args.out) if args.out else dirs[0] / "report"
    ref = None
    if args.reference:
        key, sep, value = args.reference.partition("=")
        if not sep:
            raise SfedloraError(f"--reference {args.reference!r} must be SETTING=VALUE, e.g. method=sfed-lora")
        ref = (key.strip(), value.strip())
    page = build_report(dirs, out, ref)
    print(f"report: {page} (figures and report.md beside it)")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from sfedlora.tools.diagnose import DiagnoseConfig, run_diagnose, write

    cfg = DiagnoseConfig(width=args.width, rounds=args.rounds, steps=args.steps, lr=args.lr, seed=args.seed)
    if args.quick:
        cfg.ranks, cfg.clients, cfg.width = [4, 16, 64], [1, 4, 16], 128
    print(write(run_diagnose(cfg), Path(args.out)))
    print(f"written: {args.out}/diagnose.json, diagnose.md, diagnose.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfedlora", description="Federated LoRA fine-tuning: SFed-LoRA "
                                     "(gamma = alpha*sqrt(N/r)) and its baselines, simulated in one process.")
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("sfedlora")
    except PackageNotFoundError:  # run from a source tree (PYTHONPATH=src), as on a GPU machine
        installed = "(not installed: from source)"
    parser.add_argument("--version", action="version", version=f"sfedlora {installed}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated fine-tuning", description=(
        "Run one federated fine-tuning. CONFIG is a YAML file or a built-in config name ("
        + ", ".join(builtin_configs()) + "; default: default). key=value items override config keys, "
        "e.g. fed.method=fedsa-lora lora.rank=64 train.lr=1e-3."))
    run.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    run.add_argument("--out", help="run folder (default: runs/<name>-<method>-r<rank>-<time>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run folder from its last checkpoint")
    run.add_argument("--redraw-damaged", action="store_true",
                     help="with --resume and fed.client_store=disk: a client whose state file is damaged starts "
                          "again from its seed (recorded in the round's record) instead of stopping the run")
    run.set_defaults(func=cmd_run)
    conf = sub.add_parser("config", help="print the configuration a run would use, or the config reference",
                          description="Print, as YAML, the full configuration `sfedlora run [CONFIG] [key=value ...]` "
                          "would use (defaults, the config file, then the overrides); --reference prints the "
                          "markdown reference of every key (docs/configuration.md).")
    conf.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    conf.add_argument("--reference", action="store_true", help="the reference of every key, as markdown")
    conf.set_defaults(func=cmd_config)
    exp = sub.add_parser("export", help="export a client's model: PEFT adapter folder and merged model",
                         description="Write RUN's client I as a PEFT adapter folder (OUT/adapter) and a merged "
                         "model (OUT/merged). For the FedSA family a client's model is its own B with the shared A.")
    exp.add_argument("run", metavar="RUN", help="a finished run folder")
    exp.add_argument("--client", type=int, required=True, metavar="I")
    exp.add_argument("--out", required=True)
    exp.add_argument("--no-merged", action="store_true", help="only the adapter folder")
    exp.add_argument("--force", action="store_true", help="replace OUT if it is not empty (default: refuse)")
    exp.add_argument("--best", action="store_true", help="the adapters of the best-on-validation round, not the last")
    exp.add_argument("--round", type=int, metavar="N", help="the adapters after round N (a run with "
                     "keep_round_adapters=true keeps every checkpointed round)")
    exp.add_argument("--node-dir", metavar="DIR", help="a Flower run: node-dir of the node that trained the client")
    exp.set_defaults(func=cmd_export)
    ev = sub.add_parser("eval", help="evaluate a client's exported model with lm-evaluation-harness",
                        description="Export RUN's client I (RUN/lm-eval/client-I/adapter) and run lm-eval's tasks on "
                        "it through lm-eval's `hf` model with the PEFT adapter. Results: RUN/lm-eval/client-I.json.")
    ev.add_argument("run", metavar="RUN", help="a finished instruction or math run folder")
    ev.add_argument("--lm-eval", required=True, metavar="TASKS", help="comma-separated lm-eval task names")
    ev.add_argument("--client", type=int, default=0, metavar="I", help="the client whose model (default 0)")
    ev.add_argument("--include-path", metavar="DIR", help="a folder of your own lm-eval task YAML files")
    ev.add_argument("--limit", type=float, help="examples per task (or a fraction, < 1); default all")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    ev.add_argument("--best", action="store_true", help="the best-on-validation round's adapters, not the last")
    ev.add_argument("--round", type=int, metavar="N", help="the adapters kept after round N (keep_round_adapters)")
    ev.add_argument("--node-dir", metavar="DIR", help="a Flower run: node-dir of the node that trained the client")
    ev.add_argument("--log-samples", action="store_true", help="also write every scored document and response "
                    "(RUN/lm-eval/client-I.samples.jsonl)")
    ev.set_defaults(func=cmd_eval)
    methods = sub.add_parser("methods", help="list the federated LoRA methods and their papers")
    methods.set_defaults(func=cmd_methods)
    from sfedlora.tools.sweep import SIZES, builtin_specs

    sweep = sub.add_parser("sweep", help="run an experiment grid (resumable)", description=(
        "Expand an experiment spec's grid into runs and run them one after another; finished runs with the "
        "same config are skipped, so re-running resumes (one made with other settings stops the sweep). "
        "SPEC is a YAML file or a built-in experiment: "
        + ", ".join(builtin_specs()) + "."))
    sweep.add_argument("spec")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run of the sweep")
    sweep.add_argument("--size", choices=SIZES, default="quick",
                       help="quick: offline models and data, minutes on a CPU; paper: the paper's hub models")
    sweep.add_argument("--out", help="sweep folder (default: runs/sweeps/<name>-<size>)")
    sweep.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                       help="run only the grid's runs with one of these values of KEY (repeatable: all must match)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    sweep.set_defaults(func=cmd_sweep)
    report = sub.add_parser("report", help="figures, tables and an HTML report from run folders",
                            description="Read the runs (folders with summary.json) under DIR... and write PNG "
                            "figures, report.md and a self-contained report.html: per arm (equal settings but "
                            "the seed) the mean and 95% interval over seeds, the paired difference to a "
                            "reference arm, and each arm's learning rate chosen on validation; against rank or N, "
                            "the final metric and the gradient norms with their log-log slopes; what the adaptive "
                            "rule measured (N_eff, gamma).")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", help="report folder (default: DIR/report)")
    report.add_argument("--reference", metavar="SETTING=VALUE", help="paired differences against the arms with this "
                        "setting (as the table names it), e.g. scaling=rslora (default: method=sfed-lora or "
                        "scaling=sfed where the arms have it)")
    report.set_defaults(func=cmd_report)
    diag = sub.add_parser("diagnose", help="numerical check of the scaling theorem on a wide linear adapter",
                          description="FedSA-LoRA on a synthetic wide layer: sweep r and N per scaling rule, "
                          "measure adapter output and gradient magnitudes, fit log-log slopes (Theorem 4.2 of "
                          "arXiv 2603.08058 predicts ~0 for sfed).")
    diag.add_argument("--out", default="runs/diagnose", help="folder for diagnose.json/.md/.png")
    diag.add_argument("--width", type=int, default=512, help="layer width d")
    diag.add_argument("--rounds", type=int, default=3)
    diag.add_argument("--steps", type=int, default=5, help="local SGD steps per round")
    diag.add_argument("--lr", type=float, default=0.002)
    diag.add_argument("--seed", type=int, default=0)
    diag.add_argument("--quick", action="store_true", help="small grid (tests, a first look)")
    diag.set_defaults(func=cmd_diagnose)
    from sfedlora.bench import command as bench_command

    bench_command.add_parser(sub)
    from sfedlora.flower import commands as flower_commands

    flower_commands.add_parser(sub)
    data = sub.add_parser("data", help="the built-in data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="each built-in set: its task, the pinned package it comes from, what it "
                        "is (nothing to download: make setup installs them)").set_defaults(func=cmd_data_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sfedlora.runtime.allocator import tune_malloc

    parser = build_parser()
    # options may stand anywhere among a command's CONFIG and key=value items (`run NAME --out DIR k=v`):
    # argparse stops the items at the first option, and hands back the ones after it here
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "items") or any(r.startswith("-") for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.items = [*args.items, *rest]
    tune_malloc()  # SFEDLORA_MALLOC_TUNING=0 turns it off
    warnings.formatwarning = lambda message, *_, **__: f"sfedlora: warning: {message}\n"
    try:
        return int(args.func(args))
    except SfedloraError as exc:
        print(f"sfedlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sfedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
