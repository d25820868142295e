"""`sfedlora bench --eval`: evaluation as fast as training? sfedlora's batched evaluation against the
sequential peer, on the bench's workload and batches.

(a) peer: one PEFT model, each client's adapter loaded in turn (set_peft_model_state_dict), its batches
    scored one after another (HF's forward with labels), and for language models each client's prompts
    decoded with `generate` (KV cache) one client at a time.
(b) sfedlora: the clients' adapters stacked (the evaluation group size `sfedlora run` would use), every
    client's rows scored in one batched forward per batch (client.evaluate.evaluate_group), and the
    prompts of a decoding group (simulation.grouping: every client the memory allows) decoded together
    (`generate` over the stacked adapters, KV cache), as
    client.evaluate.greedy_texts does for math accuracy and samples (both sides decode through it).
Scored: every client's K batches of b x seq tokens (evaluation tokens per second); decoded: the first half
of each row as the prompt, `new_tokens` new tokens each, no early stop (generated tokens per second).
Both sides at the precision (b) resolves to, one untimed warm-up, then the median of `repeats` timings.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sfedlora.adapters.inject import load_group
from sfedlora.adapters.peft import to_state_dict
from sfedlora.bench.peer import BenchConfig, Peer, engine
from sfedlora.client.evaluate import evaluate_group, greedy_texts
from sfedlora.runtime.setup import DTYPES


def _median_s(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def client_rows(cfg: BenchConfig, eng: Any) -> list[list[dict[str, Any]]]:
    """Each client's bench batches as evaluation rows (language models: the first half of each row the prompt)."""
    lm = eng.task != "classification"
    return [[{"input_ids": b["input_ids"][i].to(torch.int32), **({"n_prompt": cfg.seq // 2} if lm else
              {"label": int(b["label"][i])})} for b in client for i in range(cfg.batch)] for client in eng.batches]


def groups_of(n: int, g: int) -> list[list[int]]:
    """Clients 0..n-1 in consecutive groups of g (the last may be smaller)."""
    return [list(range(c, min(c + g, n))) for c in range(0, n, g)]


def scorer(cfg: BenchConfig, eng: Any) -> Any:
    """sfedlora's scoring of every client's rows, in the evaluation groups `sfedlora run` would use: a callable."""
    rows = client_rows(cfg, eng)
    groups = groups_of(cfg.clients, eng.groups.eval)

    def score() -> None:
        for group in groups:
            load_group(eng.model, [eng.init[c] for c in group], [1.0] * len(group), eng.device)
            evaluate_group(eng.model, [rows[c] for c in group], eng.task, eng.tok.pad_token_id, cfg.batch, eng.device)
    return score


def eval_share(cfg: BenchConfig, eng: Any, train_round_s: float) -> dict[str, Any]:
    """What evaluating costs beside training on the bench's workload: sfedlora's scoring of the round's own tokens
    (once each, no gradient) timed as the rounds were, its seconds per token against a training round's, and
    its share of a round that trains and then evaluates those tokens."""
    s = _median_s(scorer(cfg, eng), cfg.repeats)
    return {"score_seconds": s, "train_round_seconds": train_round_s, "per_token_vs_training": s / train_round_s,
            "share_of_round": s / (s + train_round_s)}


def run_eval_bench(cfg: BenchConfig, new_tokens: int = 16) -> dict[str, Any]:
    from peft import set_peft_model_state_dict

    eng = engine(cfg)
    model, tok, device, task = eng.model, eng.tok, eng.device, eng.task
    peer = Peer(cfg, task, DTYPES[eng.precision], device)
    lm = task != "classification"
    rows = client_rows(cfg, eng)
    decoding = groups_of(cfg.clients, eng.groups.decoding)
    ours_score = scorer(cfg, eng)

    @torch.inference_mode()
    def peer_score() -> None:
        for c, client in enumerate(eng.batches):
            set_peft_model_state_dict(peer.model, to_state_dict(eng.init[c]))
            for batch in client:
                b = {k: v.to(device) for k, v in batch.items()}
                if "label" in b:
                    b["labels"] = b.pop("label")
                peer.model(**b)

    def ours_generate() -> None:
        for group in decoding:
            load_group(model, [eng.init[c] for c in group], [1.0] * len(group), device)
            greedy_texts(model, tok, [rows[c][:cfg.batch] for c in group], cfg.batch, new_tokens, device, new_tokens)

    def peer_generate() -> None:
        for c in range(cfg.clients):
            set_peft_model_state_dict(peer.model, to_state_dict(eng.init[c]))
            greedy_texts(peer.model, tok, [rows[c][:cfg.batch]], cfg.batch, new_tokens, device, new_tokens)

    seconds = {"a": _median_s(peer_score, cfg.repeats), "b": _median_s(ours_score, cfg.repeats)}
    out: dict[str, Any] = {"config": cfg.__dict__, "device": str(device), "precision": eng.precision,
                           "eval_group": eng.groups.eval, "decode_group": eng.groups.decoding,
                           "scored_tokens": eng.tokens, "score_seconds": seconds,
                           "score_tokens_per_s": {k: eng.tokens / v for k, v in seconds.items()},
                           "ratio_score": seconds["a"] / seconds["b"]}
    if lm:
        generated = cfg.clients * cfg.batch * new_tokens
        gen = {"a": _median_s(peer_generate, cfg.repeats), "b": _median_s(ours_generate, cfg.repeats)}
        out.update({"new_tokens": new_tokens, "generated_tokens": generated, "generate_seconds": gen,
                    "generate_tokens_per_s": {k: generated / v for k, v in gen.items()},
                    "ratio_generate": gen["a"] / gen["b"]})
    return out


def share_lines(e: dict[str, Any]) -> list[str]:
    """What `sfedlora bench` prints of eval_share."""
    return [f"evaluation of the round's tokens (b): {e['score_seconds']:.2f} s, {e['per_token_vs_training']:.2f}x a "
            f"training round's time; {e['share_of_round']:.0%} of a round that trains and then evaluates them"]


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"evaluation, device {r['device']}, {r['precision']} both, (b) {r['eval_group']} clients per scoring "
             f"pass, {r.get('decode_group', r['eval_group'])} per decoding pass:",
             f"  scoring  (a) sequential PEFT {r['score_tokens_per_s']['a']:>9.1f} tokens/s   (b) sfedlora batched "
             f"{r['score_tokens_per_s']['b']:>9.1f} tokens/s   ratio {r['ratio_score']:.2f}x"]
    if "ratio_generate" in r:
        lines.append(f"  decoding (a) sequential PEFT {r['generate_tokens_per_s']['a']:>9.1f} tokens/s   (b) sfedlora "
                     f"batched {r['generate_tokens_per_s']['b']:>9.1f} tokens/s   ratio {r['ratio_generate']:.2f}x "
                     f"({r['new_tokens']} new tokens per prompt, KV cache both)")
    return lines


__all__ = ["run_eval_bench", "report_lines", "eval_share", "share_lines"]
