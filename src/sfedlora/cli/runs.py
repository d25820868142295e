"""`sfedlora run | config | export | eval | methods | data`: one run and what is done with it. Each calls the Python
API (sfedlora.api) or the library function it names."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfedlora.cli.options import say, split_items
from sfedlora.config import builtin_configs, config_path
from sfedlora.errors import SfedloraError


def cmd_run(args: argparse.Namespace) -> int:
    from sfedlora import api
    from sfedlora.runtime.records import summary_lines

    if args.resume:
        if args.items:
            raise SfedloraError("--resume continues a run with the config it was started with; give no CONFIG or "
                                "overrides")
        result = api.resume(args.resume, progress=not args.quiet, echo=say, redraw_damaged=args.redraw_damaged)
    else:
        if args.redraw_damaged:
            raise SfedloraError("--redraw-damaged goes with --resume DIR (a run that found a damaged client state "
                                "file)")
        name, overrides = split_items(args.items)
        result = api.run(name, overrides, out=args.out, progress=not args.quiet, echo=say)
    if result.summary:
        print("\n".join(summary_lines(result.summary, result.path)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from sfedlora.config import load_config, to_dict
    from sfedlora.config.reference import reference

    if args.reference:
        print(reference(), end="")
        return 0
    name, overrides = split_items(args.items)
    print(yaml.safe_dump(to_dict(load_config(config_path(name), overrides)), sort_keys=False), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sfedlora import api

    info = api.export(args.run, args.client, args.out, merged=not args.no_merged, force=args.force,
                      node_dir=args.node_dir, best=args.best, round=args.round)
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
    from sfedlora import api
    from sfedlora.tools.harness import report_lines

    results = api.lm_eval(args.run, [t.strip() for t in args.lm_eval.split(",") if t.strip()], args.client,
                          args.include_path, args.limit, args.num_fewshot, args.best, args.round, args.log_samples,
                          batch_size=args.batch_size, node_dir=args.node_dir)
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


def _which_adapters(parser: argparse.ArgumentParser) -> None:
    """The options export and eval share: which round's adapters of the client, and where a Flower run keeps them."""
    parser.add_argument("--best", action="store_true",
                        help="the adapters of the best-on-validation round, not the last")
    parser.add_argument("--round", type=int, metavar="N", help="the adapters after round N (a run with "
                        "keep_round_adapters=true keeps every checkpointed round)")
    parser.add_argument("--node-dir", metavar="DIR", help="a Flower run: node-dir of the node that trained the client")


def add(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run one federated fine-tuning", description=(
        "Run one federated fine-tuning. CONFIG is a YAML file or a built-in config name ("
        + ", ".join(builtin_configs()) + "; default: default). key=value items override config keys, "
        "e.g. fed.method=fedsa-lora lora.rank=64 train.lr=1e-3. Options may stand anywhere among them."))
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
    _which_adapters(exp)
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
    _which_adapters(ev)
    ev.add_argument("--log-samples", action="store_true", help="also write every scored document and response "
                    "(RUN/lm-eval/client-I.samples.jsonl)")
    ev.set_defaults(func=cmd_eval)
    methods = sub.add_parser("methods", help="list the federated LoRA methods and their papers")
    methods.set_defaults(func=cmd_methods)
    data = sub.add_parser("data", help="the built-in data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="each built-in set: its task, the pinned package it comes from, what it "
                        "is (nothing to download: make setup installs them)").set_defaults(func=cmd_data_list)
