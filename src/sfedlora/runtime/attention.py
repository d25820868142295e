"""The attention implementation of the frozen base, chosen by measurement (`model.attention: auto`).

Which of Hugging Face's attention implementations is fastest depends on the device, the precision and the sequence
length: on an AMX CPU (2 cores) a SmolLM2 forward + backward over 4 x 128 tokens took 0.93 s with "sdpa" and 0.73 s
with "eager" in bf16, 1.59 s and 1.66 s in fp32 (the performance issue's measurements). So at set-up, for `auto`,
each implementation the model supports (CANDIDATES) is timed on one training step of the run's own shape (a batch
of the longest training example, the widest client's adapters trained, forward and backward; one warm-up each, then
the fastest of REPEATS, the implementations timed in turn) and the fastest is taken if it beats the default
("sdpa", what transformers loads) by more than MARGIN, else the default: a near-tie keeps the default, so a rerun
on the same machine chooses the same. The choice and the timings are recorded (`resolved.attention`); a resumed run
keeps its recorded choice; `sdpa` or `eager` forces one, unmeasured. The probe itself is client.probe's (a training
step needs the client's pieces); Flower nodes do not measure.

The timings are kept per situation (runtime.timings): a measurement costs seconds (about 10 s for SmolLM2 at 2 x
128 tokens on 2 cores), and a sweep's runs share one situation. A run that reuses timings records them with rule
"cached" and when they were measured.

Implementations compute the same attention; their results agree to the precision's rounding (a test compares one
round's adapters under each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfedlora.runtime import timings

CANDIDATES = ("sdpa", "eager")
DEFAULT = "sdpa"
MARGIN = 0.10
REPEATS = 2


def choose(seconds: dict[str, float], default: str = DEFAULT, margin: float = MARGIN) -> str:
    """The fastest implementation if it beats `default` by more than `margin` (a share of the default's time),
    else the default (or, where the default was not timed, the fastest)."""
    fastest = min(seconds, key=lambda k: seconds[k])
    if default not in seconds:
        return fastest
    return fastest if seconds[fastest] < (1 - margin) * seconds[default] else default


def current(model: Any) -> str:
    return str(getattr(model.config, "_attn_implementation", None) or DEFAULT)


def use(model: Any, implementation: str) -> None:
    """Switch the loaded model's attention (transformers' set_attn_implementation; every sub-model follows)."""
    if current(model) != implementation:
        model.set_attn_implementation(implementation)


def supported(model: Any) -> list[str]:
    """The CANDIDATES this model accepts (each tried; the model is left as it was)."""
    was, out = current(model), []
    for name in CANDIDATES:
        try:
            use(model, name)
        except (ValueError, ImportError, NotImplementedError):
            continue
        if current(model) == name:
            out.append(name)
    use(model, was)
    return out


def measure(model: Any, step: Callable[[], object], implementations: list[str],
            repeats: int = REPEATS) -> dict[str, float]:
    """Seconds of one `step()` (a training step's forward and backward) under each implementation: one warm-up
    each, then `repeats` rounds that time every implementation in turn, the fastest of each kept. Interleaved, so
    a load that comes and goes (another process on the machine) slows each implementation alike: timed one after
    the other, a MiniLM step read 1.71 s under sdpa and 0.70 s under eager beside a sweep, where a quiet machine
    gives 0.19 s for both. The RNG streams are left as they were (dropout draws in the step)."""
    was = current(model)

    def under(name: str) -> Callable[[], object]:
        use(model, name)
        return step
    seconds = timings.time_in_turn(under, implementations, implementations, repeats)
    use(model, was)
    return seconds


def resolve_attention(model: Any, setting: str, step: Callable[[], object],
                      key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set the model's attention as `model.attention` says (auto: measured with `step`, or the timings cached
    under `key`, the measurement's situation) and describe it: {"implementation", "rule": fixed | measured |
    cached | only, "seconds": per implementation, "measured_at" (measured or cached)}."""
    if setting != "auto":
        use(model, setting)
        return {"implementation": setting, "rule": "fixed"}
    options = supported(model)
    if len(options) < 2:
        return {"implementation": current(model), "rule": "only"}
    key = None if key is None else {**key, "what": "attention", "candidates": options}
    seconds, rule, when = timings.measured(key, lambda: measure(model, step, options))
    chosen = choose(seconds)
    use(model, chosen)
    return {"implementation": chosen, "rule": rule, "seconds": seconds} | ({"measured_at": when} if when else {})
