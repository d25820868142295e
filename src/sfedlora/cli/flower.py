"""`sfedlora flower ...`: the Flower runner (parsed without Flower installed; running it needs the `flower`
extra)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from sfedlora.cli.options import add_options, from_options, say

INSECURE_HELP = ("no TLS and no SuperNode authentication (default: a fresh CA and certificate for 127.0.0.1, and "
                 "only the deployment's registered SuperNode keys may connect)")


def _insecure(args: argparse.Namespace) -> bool:
    if args.insecure:
        warnings.warn("--insecure: the deployment runs without TLS and accepts any SuperNode; use it only on a "
                      "machine you alone use", stacklevel=2)
    return bool(args.insecure)


def cmd_flower(args: argparse.Namespace) -> int:
    from sfedlora.flower import require_flower

    require_flower()
    from sfedlora.flower import deploy, launch
    from sfedlora.flower.settings import ServerSettings
    from sfedlora.runtime.records import summary_lines

    state = Path(getattr(args, "state", "runs/flower-local"))
    if args.flower_command == "down":
        stopped = deploy.down(state)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running from {state}")
        return 0
    if args.flower_command == "up":
        procs = deploy.up(args.nodes, state, args.port, insecure=_insecure(args))
        print(f"SuperLink on 127.0.0.1:{procs['port']} and {args.nodes} SuperNodes (pids in {state}/processes.json); "
              f"`sfedlora flower submit` runs on it, `sfedlora flower down` stops it")
        return 0
    settings = from_options(ServerSettings, args)
    run = launch.prepare(args.items, args.out, settings)
    if args.flower_command == "simulate":
        summary = launch.simulate(run, args.cpus_per_client)
    elif args.flower_command == "submit":
        summary = launch.submit(run, state, args.timeout, echo=say)
    else:
        summary = launch.run_local(run, state, args.port, args.timeout, echo=say, insecure=_insecure(args))
    print("\n".join(summary_lines(summary, run.out)))
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    """`sfedlora flower ...`: its subcommands and options."""
    from sfedlora.flower.deploy import DEFAULT_PORT
    from sfedlora.flower.settings import ServerSettings

    flower = sub.add_parser("flower", help="run on Flower: its simulation engine, or a deployment",
                            description="The same methods on Flower (flwr 1.41 Message API): `simulate` in "
                            "Flower's simulation engine; `run` starts a local deployment on 127.0.0.1 (one "
                            "SuperLink, one SuperNode per client), runs, and stops it; `up` / `submit` / `down` do "
                            "those steps one at a time. Results go to the same run-folder format as `sfedlora run`.")
    fsub = flower.add_subparsers(dest="flower_command", required=True)
    for name, text in (("run", "local deployment: start, run, stop (one command)"),
                       ("simulate", "Flower's simulation engine (Ray), one process tree"),
                       ("submit", "run on a deployment started with `sfedlora flower up`")):
        p = fsub.add_parser(name, help=text, description=text + ". CONFIG and key=value overrides as in `run`.")
        p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
        p.add_argument("--out", help="run folder (default: runs/<name>-<method>-r<rank>-flower-<time>)")
        add_options(p, ServerSettings)
        if name == "simulate":
            p.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per virtual client")
        else:
            p.add_argument("--state", default="runs/flower-local", help="deployment folder: logs, PIDs, node dirs")
            p.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds "
                           "(default: (rounds + 2) x round timeout + node wait)")
        if name == "run":
            p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
            p.add_argument("--port", type=int, default=DEFAULT_PORT,
                           help=f"SuperLink port; SuperNode i uses port+1+i (default {DEFAULT_PORT})")
        p.set_defaults(func=cmd_flower)
    up = fsub.add_parser("up", help="start a SuperLink and N SuperNodes on 127.0.0.1")
    up.add_argument("--nodes", type=int, required=True, help="SuperNodes (= fed.clients of the runs)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT)
    up.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    up.add_argument("--state", default="runs/flower-local")
    up.set_defaults(func=cmd_flower)
    down = fsub.add_parser("down", help="stop the processes `up` started (by their recorded PIDs)")
    down.add_argument("--state", default="runs/flower-local")
    down.set_defaults(func=cmd_flower)
