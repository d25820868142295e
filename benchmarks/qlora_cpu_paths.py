"""A 4-bit QLoRA run on both of bitsandbytes' CPU paths, on whatever CPU this is: bitsandbytes' AVX512-BF16
probe (`bitsandbytes.nn.modules.has_avx512bf16`, read when a Linear4bit is made) answered as this CPU answers
it, then faked to say yes. On an AVX512-BF16 CPU bitsandbytes 0.50 repacks a 4-bit weight for inference at
the first eval-mode forward without gradients, into a format whose kernel has no backward; sfedlora keeps its
layers out of it (runtime.quantize), so both lines must train alike: nonzero gradients, the validation
perplexity moving from round 0. Prints each path's round-0 and last-round validation perplexity
(token-weighted over the clients) and mean |gA|, |gB| of the last round.

    .venv/bin/python benchmarks/qlora_cpu_paths.py [--model smollm2-135m] [--rounds 1] [override ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import bitsandbytes as bnb

from sfedlora.cli import main as sfedlora
from sfedlora.runtime import rundir
from sfedlora.runtime.records import clients_mean


def run(probe: bool | None, model: str, rounds: int, extra: list[str], out: Path) -> str:
    real = bnb.nn.modules.has_avx512bf16
    if probe is not None:
        bnb.nn.modules.has_avx512bf16 = lambda: probe
    try:
        code = sfedlora(["run", "smollm2-instruct", f"model.name={model}", "model.quantization=4bit",
                         "model.precision=fp32", "fed.clients=2", f"fed.rounds={rounds}", "fed.local_steps=3",
                         "data.max_examples=200", "eval.max_examples=8", *extra, "--out", str(out), "--quiet"])
    finally:
        bnb.nn.modules.has_avx512bf16 = real
    if code != 0:
        return f"exit {code} (the error is above)"
    recs = rundir.records(out)
    ppl = [r["eval"]["personal"]["val"]["perplexity"]["weighted"] for r in (recs[0], recs[-1])]
    ga, gb = (clients_mean(recs[-1][k]) or 0.0 for k in ("grad_norm_A", "grad_norm_B"))
    last = recs[-1]["round"]
    return f"val perplexity round 0 {ppl[0]:.4g} -> round {last} {ppl[1]:.4g}; |gA| {ga:.4g}, |gB| {gb:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    real = bool(bnb.functional.has_avx512bf16())
    with tempfile.TemporaryDirectory() as tmp:
        for name, probe in ((f"this CPU's answer ({real})", None), ("faked: AVX512-BF16", True)):
            print(f"probe {name}: {run(probe, args.model, args.rounds, args.overrides, Path(tmp) / str(probe))}",
                  flush=True)


if __name__ == "__main__":
    main()
