"""How much larger each scaling rule makes the adapter's output than a base rule, in a finished rule sweep.

Reads the run folders of a sweep (`sfedlora sweep rule-sweep` or `rule-client-sweep`) at one learning rate
and prints, per init, rank and N, each rule's adapter output variance (gamma*B*A*x over real tokens, the
`adapter_out_var` of metrics.jsonl, mean over clients) divided by the base rule's: in round 1 (before any
aggregation) and averaged over the later rounds; mean over seeds of the per-seed ratios. sqrt(N) in gamma
gives N times the variance in round 1; after the first aggregation, averaging independent A's shrinks the
output by about 1/N, which a shared init does not.

    .venv/bin/python benchmarks/output_scale.py runs/sweeps/rule-sweep-quick [--lr 0.001] [--base rslora]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from sfedlora.runtime.records import client_values
from sfedlora.tools.arms import find_runs


def _variance(records: list[dict], later: bool) -> float:
    rounds = [r for r in records if (r["round"] > 1 if later else r["round"] == 1)]
    return statistics.fmean(statistics.fmean(client_values(r["adapter_out_var"])) for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--base", default="rslora", help="the rule the others are divided by")
    args = parser.parse_args()
    by_point: dict[tuple, dict[str, dict[int, list[dict]]]] = defaultdict(lambda: defaultdict(dict))
    for run in find_runs([args.sweep]):
        settings = run.settings()
        if not run.trained or settings["train.lr"] != args.lr or isinstance(settings["rank"], str):
            continue
        point = (settings["lora.init"], settings["rank"], settings["fed.clients"])
        by_point[point][settings["lora.scaling"]][run.seed] = run.records
    for (init, rank, clients), rules in sorted(by_point.items()):
        base = rules.get(args.base)
        if not base:
            continue
        cells = []
        for rule, seeds in sorted(rules.items()):
            common = sorted(set(seeds) & set(base))
            if rule == args.base or not common:
                continue
            ratios = [[_variance(seeds[s], later) / _variance(base[s], later) for s in common]
                      for later in (False, True)]
            cells.append(f"{rule} {statistics.fmean(ratios[0]):.2f} / {statistics.fmean(ratios[1]):.2f}")
        print(f"init {init:11s} r {rank:3d} N {clients:2d} ({len(base)} seeds), output variance / {args.base}'s, "
              f"round 1 / later rounds: " + ", ".join(cells))


if __name__ == "__main__":
    main()
