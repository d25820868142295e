"""`sfedlora bench`: sfedlora's batched engine against sequential PEFT clients, and its memory, evaluation and
profile."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfedlora.cli.options import add_options, from_options
from sfedlora.cli.options import say as _say


def cmd_bench(args: argparse.Namespace) -> int:
    from sfedlora.bench import memory, peer

    cfg = from_options(peer.BenchConfig, args, clients=args.clients or 4,
                       group_size=args.group_size if args.group_size == "auto" else int(args.group_size))
    if args.profile:
        from sfedlora.bench import profile

        r = profile.profile(cfg)
        lines = profile.report_lines(r)
    elif args.eval:
        from sfedlora.bench import evaluation

        _say(peer.heading(cfg).replace("timed rounds", "timed passes"))
        r = evaluation.run_eval_bench(cfg)
        lines = evaluation.report_lines(r)
    elif args.memory:
        r = memory.measure(args.workload, args.clients or 100, args.rank, args.steps, args.batch, args.seq,
                           args.precision, args.set, echo=_say, per_round=args.clients_per_round, rounds=args.rounds,
                           examples=args.examples)
        lines = memory.report_lines(r)
    else:
        from sfedlora.bench import evaluation, profile

        _say(peer.heading(cfg))
        eng = peer.engine(cfg)
        r = peer.run_bench(cfg, echo=_say, eng=eng)
        r["evaluation"] = evaluation.eval_share(cfg, eng, r["seconds"]["b"])
        r["profile"] = profile.profile_round(eng)
        lines = profile.report_lines(r["profile"]) + evaluation.share_lines(r["evaluation"]) + peer.report_lines(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print("\n".join(lines))
    return 0


def add(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="sfedlora's batched engine against sequential PEFT clients",
                           description="Run the peer way of simulating clients (sequential, one PEFT model, "
                           "per-client adapter load/save; its base in fp32, and also in bf16 when sfedlora runs "
                           "bf16) and sfedlora's batched engine on the same workload, alternating; print tokens/s, "
                           "GFLOP/s against a measured GEMM ceiling, peak memory, the adapters' max difference, "
                           "(b)'s evaluation of the same tokens against its training round, one profiled round of (b) "
                           "by operator category (in --json too: `evaluation`, `profile`), and last the ratio b/a "
                           "against the peer at the same precision.")
    from sfedlora.bench.peer import BenchConfig

    add_options(bench, BenchConfig, skip=("clients",))
    bench.add_argument("--clients", type=int, default=None, help="N (default 4; with --memory 100)")
    bench.add_argument("--eval", action="store_true", help="evaluation throughput instead: batched scoring and "
                       "decoding (KV cache) against the sequential PEFT peer")
    bench.add_argument("--json", help="also write the numbers to this file")
    bench.add_argument("--profile", action="store_true", help="instead: one round of the batched engine under "
                       "torch.profiler, its self time by operator category")
    bench.add_argument("--memory", action="store_true",
                       help="instead: real rounds of N clients (default 100); the memory the engine claims "
                       "(base once + one group's activations + the client states it holds: N x (adapter + optimizer "
                       "state) in memory, a round's participants' on disk) against the process's measured peak, "
                       "and the time per round")
    bench.add_argument("--clients-per-round", type=int, default=0, metavar="P",
                       help="--memory: P clients sampled per round (default 0: all); evaluation samples P too")
    bench.add_argument("--rounds", type=int, default=1, help="--memory: rounds to run (time per round: after the "
                       "first)")
    bench.add_argument("--examples", type=int, default=0, help="--memory: records drawn for all clients together "
                       "(default 50 per client); give the same number to compare runs with different N")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="--memory: a run-config override, e.g. --set train.group_size=10 (repeatable)")
    bench.set_defaults(func=cmd_bench)
