"""sfedlora's one command line. Every subcommand lives in one module here (runs.py: a run and what is done with it;
studies.py: sweeps, reports, the diagnosis; bench.py; flower.py), prints through one printer, and calls the Python
API or the library function it names; options of the commands with a settings dataclass are generated from it
(options.py). Options may stand anywhere among a command's CONFIG and key=value items."""

from __future__ import annotations

import argparse
import sys
import warnings

from sfedlora.errors import SfedloraError


def build_parser() -> argparse.ArgumentParser:
    from sfedlora.cli import bench, flower, runs, studies

    parser = argparse.ArgumentParser(prog="sfedlora", description="Federated LoRA fine-tuning: SFed-LoRA "
                                     "(gamma = alpha*sqrt(N/r)) and its baselines, in one process or on Flower.")
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("sfedlora")
    except PackageNotFoundError:  # run from a source tree (PYTHONPATH=src), as on a GPU machine
        installed = "(not installed: from source)"
    parser.add_argument("--version", action="version", version=f"sfedlora {installed}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (runs, studies, bench, flower):
        module.add(sub)
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
