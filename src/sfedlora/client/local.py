"""A client's pieces, for one client or a batched group of them: its fresh adapters, its data order, its adapters
installed, K local steps, and its personalised evaluation.

The client step (client.step) puts them together for both runners, so that both compute the same thing from the
same seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from sfedlora.adapters.inject import init_adapter_state, load_group, read_group
from sfedlora.client.evaluate import correct_answers, evaluate_group, generate_samples
from sfedlora.client.optim import ClientOptState, StackedOptimizer
from sfedlora.client.train import train_group
from sfedlora.config import RunConfig
from sfedlora.core.scaling import Gamma
from sfedlora.core.schedule import global_step
from sfedlora.core.state import pad_opt_state, pad_state, rank_of, truncate_opt_state, truncate_state
from sfedlora.data.batching import ClientSampler, collate
from sfedlora.data.encode import Encoded
from sfedlora.errors import incorrect_results_are_errors

State = dict[str, torch.Tensor]
STAT_KEYS = ("loss", "grad_norm_A", "grad_norm_B", "out_mean", "out_var", "grad_norm_A_steps", "grad_norm_B_steps")


def fresh_state(model: Any, cfg: RunConfig, init: str, c: int, rank: int, r_max: int, rnd: int = 0) -> State:
    """Client c's fresh adapters (B = 0). Shared init draws one A at the largest rank r_max and gives
    client c its first `rank` rows, so nested ranks share their common rows; independent init seeds per
    client. `rnd` > 0 re-draws (FLoRA's restarts)."""
    seed = cfg.seed * 100003 + rnd * 7777 + (0 if init == "shared" else 1 + c)
    gen = torch.Generator().manual_seed(seed)
    full = init_adapter_state(model, r_max, gen, cfg.lora.a_init, cfg.lora.a_init_std)
    return truncate_state(full, rank)


def sampler(cfg: RunConfig, c: int, n_train: int) -> ClientSampler:
    """Client c's endless seeded order over its training examples."""
    return ClientSampler(n_train, cfg.seed * 7919 + c)


def install(model: Any, states: Sequence[State], gammas: Sequence[Gamma], device: torch.device) -> int:
    """Install a group's adapters, zero-padded to its largest rank; returns that rank."""
    r_group = max(rank_of(s) for s in states)
    load_group(model, [pad_state(s, r_group) for s in states], gammas, device)
    return r_group


def train_clients(model: Any, tok: Any, task: str, cfg: RunConfig, trained: frozenset[str],
                  states: Sequence[State], gammas: Sequence[Gamma], opt_states: Sequence[ClientOptState],
                  samplers: Sequence[ClientSampler], train_ex: Sequence[Sequence[dict[str, Any]]],
                  device: torch.device, on_step: Any = None, rnd: int = 1,
                  anchored: frozenset[str] = frozenset()
                  ) -> tuple[list[State], list[ClientOptState], list[dict[str, Any]]]:
    """K local steps of round `rnd` for a group of clients at once. Returns their new states, optimizer
    states (empty unless train.optimizer_state=keep) and per-client training statistics. `anchored`: the factor
    kinds the server aggregates (FedProx's proximal term, train.prox_mu)."""
    r_group = install(model, states, gammas, device)
    opt = StackedOptimizer(cfg.train)
    keep = cfg.train.optimizer_state == "keep"
    if keep:
        opt.load_client_states([pad_opt_state(s, r_group) for s in opt_states], device)
    b = cfg.train.batch_size

    def next_batch() -> dict[str, torch.Tensor]:
        examples = [rows[i] for rows, sm in zip(train_ex, samplers, strict=True) for i in sm.take(b)]
        return {k: v.to(device) for k, v in collate(examples, tok.pad_token_id).items()}

    k = cfg.fed.local_steps
    with incorrect_results_are_errors(f"round {rnd}'s local training"):
        result = train_group(model, next_batch, opt, trained, k, cfg.train, task, first_step=global_step(rnd, 0, k),
                             total_steps=cfg.fed.rounds * k, on_step=on_step, anchored=anchored)
    ranks = [rank_of(s) for s in states]
    new_states = [truncate_state(s, r) for s, r in zip(read_group(model), ranks, strict=True)]
    new_opt = [truncate_opt_state(opt.client_state(i), r) if keep else {} for i, r in enumerate(ranks)]
    stats = [{k: getattr(result, k)[i] for k in STAT_KEYS} for i in range(len(states))]
    return new_states, new_opt, stats


SPLITS = ("val", "test")
PARTS: tuple[str, ...] = ("score", "decode")


def evaluate_clients(model: Any, tok: Any, task: str, cfg: RunConfig, states: Sequence[State],
                     gammas: Sequence[Gamma], encoded: Sequence[Encoded], device: torch.device,
                     parts: Sequence[str] = PARTS) -> dict[str, list[dict[str, Any]]]:
    """Each client's own adapters on its own validation and test splits: one row per client and split;
    under "samples" (instruction and math) each client's completions of its fixed sample prompts. `parts`:
    "score" (loss, accuracy or perplexity) and "decode" (math accuracy and the samples: greedy decodings,
    which the in-process runner runs in larger groups than scoring, simulation.grouping)."""
    install(model, states, gammas, device)
    out: dict[str, list[dict[str, Any]]] = {split: [{} for _ in encoded] for split in SPLITS}
    if "score" in parts:
        with incorrect_results_are_errors("evaluation"):
            out = {split: evaluate_group(model, [getattr(e, split) for e in encoded], task, tok.pad_token_id,
                                         cfg.eval.batch_size, device) for split in SPLITS}
    if "decode" in parts:
        decoded = decode_clients(model, tok, task, cfg, encoded, device)
        for split in SPLITS:
            for row, extra in zip(out[split], decoded.get(split, ()), strict=False):
                row.update(extra)
        if "samples" in decoded:
            out["samples"] = decoded["samples"]
    return out


def _prompt_length(e: Encoded, at: tuple[str, int]) -> int:
    return int(e.decode[at[0]][at[1]]["n_prompt"])


def decode_clients(model: Any, tok: Any, task: str, cfg: RunConfig, encoded: Sequence[Encoded],
                   device: torch.device) -> dict[str, list[dict[str, Any]]]:
    """The installed clients' greedy decodings: math accuracy per split (`accuracy`, `n_decoded`), every split's
    sample of a client decoded in one batched pass sorted by prompt length; and the sample completions."""
    out: dict[str, list[dict[str, Any]]] = {}
    bs = cfg.eval.batch_size
    if task == "math":
        order = [sorted(((split, i) for split in SPLITS for i in range(len(e.decode.get(split, [])))),
                        key=partial(_prompt_length, e)) for e in encoded]
        with incorrect_results_are_errors("evaluation"):
            correct = correct_answers(model, tok, [[e.decode[s][i] for s, i in o] for e, o in
                                                   zip(encoded, order, strict=True)], bs, cfg.eval.max_new_tokens,
                                      device)
        for split in SPLITS:
            out[split] = []
            for e, o, hits in zip(encoded, order, correct, strict=True):
                n = len(e.decode.get(split, []))
                right = sum(h for (s, _), h in zip(o, hits, strict=True) if s == split)
                out[split].append({"accuracy": right / max(n, 1), "n_decoded": n})
    if any(e.samples for e in encoded):
        with incorrect_results_are_errors("generating samples"):
            out["samples"] = [{"samples": s} for s in generate_samples(
                model, tok, [e.samples for e in encoded], bs, cfg.eval.sample_tokens, device)]
    return out
