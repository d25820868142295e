"""`sfedlora sweep | report | diagnose`: many runs, what they say, and the scaling theorem checked numerically."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfedlora.cli.options import add_options, from_options


def cmd_sweep(args: argparse.Namespace) -> int:
    from sfedlora import api
    from sfedlora.tools.sweep import stale

    runs = api.sweep(args.spec, args.size, args.out, args.overrides, args.only, dry_run=args.dry_run)
    if args.dry_run:
        for r in runs:
            print(f"{('other' if stale(r) else 'done ') if r.done else 'todo '} {r.folder}  {' '.join(r.overrides)}")
        return 0
    out = runs[0].folder.parent if runs else Path(args.out or "runs/sweeps")
    print(f"sweep folder: {out}/  (sfedlora report {out} --out {out}/report)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sfedlora import api

    page = api.report(args.dirs, args.out, args.reference, args.rates, args.rate_at, args.rate, args.only or ())
    print(f"report: {page} (figures and report.md beside it)")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from sfedlora import api
    from sfedlora.tools.diagnose import DiagnoseConfig

    cfg = from_options(DiagnoseConfig, args)
    if args.quick:  # a small grid, where the command line does not give one
        default = DiagnoseConfig()
        cfg.ranks = [4, 16, 64] if cfg.ranks == default.ranks else cfg.ranks
        cfg.clients = [1, 4, 16] if cfg.clients == default.clients else cfg.clients
        cfg.width = 128 if cfg.width == default.width else cfg.width
    print(api.diagnose(cfg, args.out))
    print(f"written: {args.out}/diagnose.json, diagnose.md, diagnose.png")
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    from sfedlora.tools.selection import PROTOCOLS
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
    report.add_argument("--rates", choices=PROTOCOLS, default="per-arm",
                        help="the rate protocol: per-arm (each arm's learning rate chosen on validation), transfer "
                        "(each rule's rate chosen on validation at --rate-at, then used at every value of that axis), "
                        "fixed (--rate for every arm: the SFed-LoRA paper's protocol); all never choose on test")
    report.add_argument("--rate-at", metavar="AXIS=VALUE", help="--rates transfer: where rates are chosen, e.g. rank=8")
    report.add_argument("--rate", type=float, metavar="LR", help="--rates fixed: the rate (default: the one rate every "
                        "arm ran, where there is one)")
    report.add_argument("--only", action="append", metavar="SETTING=V1,V2", help="read only the runs whose setting is "
                        "one of the values, e.g. optimizer=adamw or rank=8,384 (a dotted key or its last part; "
                        "repeatable)")
    report.set_defaults(func=cmd_report)
    diag = sub.add_parser("diagnose", help="numerical check of the scaling theorem on a wide linear adapter",
                          description="FedSA-LoRA on a synthetic wide layer: sweep r and N per scaling rule, "
                          "measure adapter output and gradient magnitudes, fit log-log slopes (Theorem 4.2 of "
                          "arXiv 2603.08058 predicts ~0 for sfed).")
    diag.add_argument("--out", default="runs/diagnose", help="folder for diagnose.json/.md/.png")
    from sfedlora.tools.diagnose import DiagnoseConfig

    add_options(diag, DiagnoseConfig)
    diag.add_argument("--quick", action="store_true", help="small grid (tests, a first look)")
    diag.set_defaults(func=cmd_diagnose)
