"""sfedlora command line: a few lines per subcommand that build a config and call the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sfedlora.errors import SfedloraError

CONFIG_DIR = Path(__file__).parent / "configs"
DATA_NAMES = ("multiemo", "vitaminc", "natural-instructions", "gsm-symbolic", "all")


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str | None) -> Path:
    if name is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    if (CONFIG_DIR / f"{name}.yaml").exists():
        return CONFIG_DIR / f"{name}.yaml"
    raise SfedloraError(f"no config file {name!r} and no built-in config of that name "
                        f"(built-in: {', '.join(builtin_configs())})")


def cmd_run(args: argparse.Namespace) -> int:
    from sfedlora.config import load_config
    from sfedlora.simulation import Simulation

    items = list(args.items)
    name = items.pop(0) if items and "=" not in items[0] else None
    cfg = load_config(config_path(name), items)
    out = Path(args.out) if args.out else Path("runs") / (
        f"{cfg.name or 'run'}-{cfg.fed.method}-r{cfg.lora.rank}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        raise SfedloraError(f"output folder {out} exists and is not empty; choose another --out")
    summary = Simulation(cfg, out, progress=not args.quiet).run()
    metric = summary["metric"]
    for scope in ("personal", "global"):
        last, best = summary[scope]["last"], summary[scope]["best"]
        if last:
            lv = last["test"]["weighted"] if isinstance(last["test"], dict) else last["test"]
            bv = best["test"]["weighted"] if isinstance(best["test"], dict) else best["test"]
            print(f"{scope:>8} test {metric}: last round {last['round']} = {lv:.4f}; "
                  f"best-on-val round {best['round']} = {bv:.4f}")
    print(f"results in {out}/ ({summary['wall_s']:.1f} s)")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from sfedlora.methods import METHODS

    for name, cls in METHODS.items():
        m = cls()
        trains = "/".join(sorted(m.trained(1) - {"head"}))
        if name == "rolora":
            trains = "B (odd rounds) / A (even rounds)"
        print(f"{name:<13} scaling {cls.default_scaling:<7} trains {trains:<32} uploads "
              f"{'/'.join(sorted(m.uploaded(1) - {'head'}))}")
        print(f"{'':<13} {cls.citation}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from sfedlora.data import bigbench

    names = list(bigbench.TASKS) + ["gsm-symbolic"] if args.name == "all" else [args.name]
    wanted = tuple(n for n in names if n in bigbench.TASKS)
    if wanted:
        print(f"preparing {', '.join(wanted)} from the bigbench==1.0.0 sdist (one download, once)...", flush=True)
        for task, n in bigbench.prepare(wanted).items():
            print(f"  {task}: {n} examples -> {bigbench.jsonl_path(task)}")
    if "gsm-symbolic" in names:
        import reasoning_gym

        reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0)
        print("  gsm-symbolic: generated on demand by reasoning-gym (nothing to download)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfedlora", description="Federated LoRA fine-tuning: SFed-LoRA "
                                     "(gamma = alpha*sqrt(N/r)) and its baselines, simulated in one process.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated fine-tuning", description=(
        "Run one federated fine-tuning. CONFIG is a YAML file or a built-in config name ("
        + ", ".join(builtin_configs()) + "; default: default). key=value items override config keys, "
        "e.g. fed.method=fedsa-lora lora.rank=64 train.lr=1e-3."))
    run.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file or name, then overrides")
    run.add_argument("--out", help="run folder (default: runs/<name>-<method>-r<rank>-<time>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
    methods = sub.add_parser("methods", help="list the federated LoRA methods and their papers")
    methods.set_defaults(func=cmd_methods)
    data = sub.add_parser("data", help="offline data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="fetch and cache an offline data set")
    prep.add_argument("name", choices=DATA_NAMES)
    prep.set_defaults(func=cmd_data_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
