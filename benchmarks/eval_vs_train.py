"""An LLM run's evaluation against its training: one in-process run set up, evaluated (round 0), trained one round
and evaluated again, with the evaluation's scoring and greedy decoding timed apart. Prints seconds.

    .venv/bin/python benchmarks/eval_vs_train.py [THREADS] [key=value ...]

The default setting is the performance issue's: the gsm-symbolic preset with SmolLM2, 4 clients, 10 SGD local
steps of 2 x 128 tokens, rank 512 on q_proj and o_proj, 12 examples per client and split scored, 1 decoded,
fp32. Overrides after THREADS (default 2) change it. Run it from a checkout (PYTHONPATH=src of another commit
times that commit).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

SETTING = ("fed.method=fedsa-lora lora.scaling=sfed lora.rank=512 lora.alpha=16 lora.targets=[q_proj,o_proj] "
           "fed.clients=4 fed.rounds=1 fed.local_steps=10 train.optimizer=sgd train.lr=0.5 train.batch_size=2 "
           "model.max_length=128 model.precision=fp32 eval.max_examples=12 eval.generate_examples=1 "
           "eval.samples=0").split()


def main(argv: list[str]) -> None:
    import sfedlora.client.local as local
    from sfedlora.config.load import load_config
    from sfedlora.simulation.runner import Simulation

    threads = int(argv[0]) if argv and argv[0].isdigit() else 2
    torch.set_num_threads(threads)
    cfg = load_config("gsm-symbolic", SETTING + [a for a in argv if "=" in a])
    spent = {"score": 0.0, "decode": 0.0}

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[part] += time.perf_counter() - t
            return out
        return wrapper

    local.evaluate_group = timed("score", local.evaluate_group)
    decoder = "correct_answers" if hasattr(local, "correct_answers") else "math_accuracy"  # before: math_accuracy
    setattr(local, decoder, timed("decode", getattr(local, decoder)))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        sim = Simulation(cfg, f"{tmp}/run", echo=lambda s: None, progress=False)
        print(f"set-up {time.perf_counter() - t:.1f} s; {threads} threads; groups {sim.groups}; attention "
              f"{getattr(sim.resolved, 'attention', 'sdpa (before model.attention)')}")

        def evaluation(label: str) -> dict[str, Any]:
            spent.update(score=0.0, decode=0.0)
            t = time.perf_counter()
            ev, _ = sim._evaluate()
            print(f"{label}: evaluation {time.perf_counter() - t:.1f} s (scoring {spent['score']:.1f} s, decoding "
                  f"{spent['decode']:.1f} s)")
            return ev

        evaluation("round 0")
        t = time.perf_counter()
        reply = sim.exchange(1, list(range(cfg.fed.clients)), None)
        sim.adopted(1, sim.aggregate(1, reply.exchange), reply.exchange)
        print(f"round 1: training {time.perf_counter() - t:.1f} s")
        ev = evaluation("round 1")
        print(f"test perplexity after round 1 (token-weighted): {ev['personal']['test']['perplexity']['weighted']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
