"""The round protocol both runners follow, as steps over states and messages, and the server's side of it (Server).
The round loop (runtime.rounds) runs it for both runners; the clients' side (steps 6, 2, 3, 4) is client.step, which
the in-process runner (sfedlora.simulation) calls for batched groups and a Flower node (sfedlora.flower) for its one
client. Neither runner has a copy of any step.

A round t:
  1. select      the server samples the round's participants, seeded (all of them under full participation)
  2. update      each participant trains the factors method.trained(t) for K local steps (client.step.train)
  3. check       a participant whose loss or adapters turned non-finite goes back to its state before the
                 round and is left out of the aggregation, with the reason recorded
  4. upload      method.upload: what the method sends (A and the head for the FedSA family; B never leaves)
  5. aggregate   method.aggregate over the accepted uploads, weighted by fed.weighting; with
                 lora.scaling=adaptive the server then measures N_eff per module (Server.rescale), which sets
                 every client's gamma from the next evaluation and round on
  6. download    method.download of the server's latest update (Server.latest: every update so far, by rows;
                 client.step.current)
                 into a client when it is next used: when it next trains or is evaluated (the in-process
                 runner, whose clients may be on disk) or its next message arrives (a Flower node); the same
                 state as downloading every round's update into every client
  7. record      one record of the round (Server.record), from what both runners know
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sfedlora.config import RunConfig
from sfedlora.core.adaptive import measure, module_gammas
from sfedlora.core.aggregate import client_weights
from sfedlora.core.privacy import add_noise, clip_upload, noise_std, sensitivity_clients
from sfedlora.core.scaling import Gamma
from sfedlora.core.schedule import global_step, lr_factor
from sfedlora.core.server_opt import ServerOptimizer, ServerOptSettings
from sfedlora.core.spectrum import spectrum_stats
from sfedlora.core.state import State, factor_kind, overlay, payload_bytes
from sfedlora.errors import SfedloraError
from sfedlora.methods import FederatedMethod
from sfedlora.runtime.records import round_record
from sfedlora.runtime.resolve import Resolved


def select(rng: random.Random, n_clients: int, per_round: int) -> list[int]:
    """Step 1: the round's participants, sorted; everyone when per_round is 0."""
    everyone = list(range(n_clients))
    return everyone if not per_round else sorted(rng.sample(everyone, per_round))


def evaluated_clients(cfg: RunConfig) -> list[int]:
    """The clients each evaluated round evaluates: all, or (eval.clients) a seeded sample, the same every round."""
    k, n = cfg.eval.clients, cfg.fed.clients
    return list(range(n)) if not k or k >= n else sorted(random.Random(cfg.seed + 29).sample(range(n), k))


def no_learning(stats: Mapping[int, Mapping[str, Any]], scaling: str, trained: frozenset[str]) -> str | None:
    """Step 3, for the round as a whole: why it cannot be a result although every upload is finite, or None.
    In a round that trains B, every accepted participant's adapter gradients exactly zero (their means over the
    local steps, before clipping) mean that no gradient reaches any adapter: B's gradient is gamma (A x) times
    the output's, nonzero wherever A and gamma are. A round that trains A alone (RoLoRA's even rounds) may
    legitimately see none while B is still 0. Under `lora.scaling=none` (gamma = 0, the head-only baseline)
    zero is what is asked for."""
    if scaling == "none" or not stats or "B" not in trained:
        return None
    if any(s["grad_norm_A"] != 0 or s["grad_norm_B"] != 0 for s in stats.values()):
        return None
    return ("every participant's adapter gradients are exactly zero, so no adapter learns and the run would "
            "record an untrained model as a result. Likely causes: a quantised base that cuts the gradient (a "
            "bitsandbytes layer in an inference-only format: model.quantization), a scaling factor of 0 "
            "(lora.alpha, or a lora.scaling=custom that gives 0: lora.scaling=none is the head-only baseline), or "
            "frozen factors (a model whose adapted modules never reach the loss)")


def bytes_down(method: FederatedMethod, update: State, ranks: list[int]) -> int:
    """What the round's participants (of these ranks) download of its update, as fp32 values: each gets
    method.sent_to(update, its rank). Clients that did not take part are not counted."""
    return sum(payload_bytes(method.sent_to(update, r)) for r in ranks)


def spectrum(method: FederatedMethod, update: State, clients: list[State] | None, gammas: list[float],
             weights: list[float], r_min: int) -> dict[str, float]:
    """Rank-collapse diagnostics of the aggregated update, averaged over adapted modules: the share of its
    energy beyond the smallest client rank, and its effective rank. Empty where the update alone does not
    determine dW and the clients' states are not at hand (a Flower server never holds a FedSA client's B)."""
    deltas = method.global_delta(update, clients, gammas, weights)
    stats = [spectrum_stats(d, r_min) for d in (deltas or {}).values()]
    if not stats:
        return {}
    return {key: sum(s[key] for s in stats) / len(stats) for key in ("energy_beyond_rmin", "effective_rank")}


def known_start(fresh: State, init: str) -> State:
    """What every client starts from, as far as a server can know it, from one client's fresh adapters drawn with a
    shared init: B (zero) and a classification head always; A only where `init` is shared (with independent inits
    each client draws its own A, so there is no global A before the first mean)."""
    return {k: v for k, v in fresh.items() if factor_kind(k) != "A" or init == "shared"}


@dataclass
class Exchange:
    """What the server gathered in one round."""

    selected: list[int]
    uploads: dict[int, State] = field(default_factory=dict)  # accepted, by client
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)  # training statistics, by client
    excluded: list[dict[str, Any]] = field(default_factory=list)  # {"client", "reason"}


class Server:
    """The server's side of the protocol, whatever carries the messages: who takes part (step 1), the
    aggregate (step 5) and the record (step 7). Keeps the latest update by rows (core.state.overlay), which
    is what a client that missed rounds downloads."""

    def __init__(self, cfg: RunConfig, method: FederatedMethod, resolved: Resolved) -> None:
        self.cfg, self.method, self.resolved = cfg, method, resolved
        self.weights = client_weights([s["train"] for s in resolved.sizes], cfg.fed.weighting)
        self.rng = random.Random(cfg.seed + 17)
        self.latest: State = {}
        self.n_eff: dict[str, float] = {}  # adaptive scaling: N_eff per module, measured (empty: N_eff = 1)
        self.trained_n_eff: dict[str, float] = {}  # what the round being recorded trained with
        self.init_sq_norms: dict[str, float] = {}  # adaptive `cumulative`: mean |A_i at init|^2 per module
        f = cfg.fed
        self.opt = ServerOptimizer(ServerOptSettings(f.server_optimizer, resolved.server_lr or 1.0, f.server_momentum,
                                                     f.server_beta1, f.server_beta2, f.server_tau))
        self.opt_s = 0.0  # the time of the round's server optimizer step
        # what every client starts from, as far as the server can know it (known_start): the previous value of a
        # tensor before its first aggregation, for server-side DP's clipping and a server optimizer's step
        self.initial: State = {}
        self.dp_round: dict[str, Any] = {}  # server-side DP: what the round's clipping and noise did

    @property
    def adaptive(self) -> bool:
        return self.resolved.scaling == "adaptive"

    def gamma(self, client: int) -> Gamma:
        """Client `client`'s gamma now: the resolved one, or with adaptive scaling one per module from the
        measured N_eff (alpha * sqrt(N_eff / r)) once the first aggregation has measured it."""
        if not self.adaptive or not self.n_eff:
            return self.resolved.gammas[client]
        return module_gammas(self.cfg.lora.alpha, self.resolved.ranks[client], self.n_eff)

    def rescale(self, exchange: Exchange, update: State) -> None:
        """After step 5, adaptive scaling only: measure N_eff of this round's participants (core.adaptive)."""
        self.trained_n_eff = dict(self.n_eff)
        if not self.adaptive or not exchange.uploads:
            return
        accepted = sorted(exchange.uploads)
        self.n_eff = measure(self.cfg.lora.adaptive, [exchange.uploads[c] for c in accepted],
                             [self.weights[c] for c in accepted], update, self.n_eff, self.init_sq_norms)

    def select(self) -> list[int]:
        return select(self.rng, self.cfg.fed.clients, self.cfg.fed.clients_per_round)

    def require(self, rnd: int, exchange: Exchange) -> None:
        """Too few acceptable uploads (fed.min_clients) stop the run, with every client's reason; so does a round
        in which no adapter got a gradient (no_learning)."""
        if reason := no_learning(exchange.stats, self.resolved.scaling, self.method.trained(rnd)):
            raise SfedloraError(f"round {rnd}: {reason}")
        if len(exchange.uploads) < self.cfg.fed.min_clients:
            diverged = any("non-finite" in e["reason"] for e in exchange.excluded)
            clip = self.cfg.train.grad_clip
            hint = "" if not diverged else (". Lower train.lr or enable train.grad_clip" if clip is None else
                                            f". Lower train.lr (train.grad_clip = {clip} is on already)")
            raise SfedloraError(f"round {rnd}: only {len(exchange.uploads)} acceptable uploads (fed.min_clients = "
                                f"{self.cfg.fed.min_clients}): "
                                + "; ".join(f"client {e['client']}: {e['reason']}" for e in exchange.excluded) + hint)

    def aggregate(self, rnd: int, exchange: Exchange) -> State:
        """Step 5: the method's aggregate of the accepted uploads; none accepted (possible only with
        fed.min_clients = 0) is an empty update: every client keeps the latest, as a Flower server does."""
        accepted = sorted(exchange.uploads)
        self.dp_round = {}
        if not accepted:
            return self.adopt({})
        uploads, weights = [exchange.uploads[c] for c in accepted], [self.weights[c] for c in accepted]
        if self.resolved.dp is None:
            return self.adopt(self.method.aggregate(uploads, weights, rnd))
        return self.adopt(self.private(rnd, accepted, uploads, weights))

    def private(self, rnd: int, accepted: list[int], uploads: list[State], weights: list[float]) -> State:
        """Server-side DP (core.privacy): each upload's change from the previous aggregate (round 1: the shared
        initial upload) clipped to C, the method's aggregate, Gaussian noise of std z C max_i w_i (z C / n with
        equal weights) drawn from a generator seeded by the run's seed and the round (a resumed run draws the
        same)."""
        dp = self.resolved.dp
        assert dp is not None
        reference = self.previous()
        clipped, norms = [], []
        for u in uploads:
            c, norm = clip_upload(u, reference, dp["clipping_norm"])
            clipped.append(c)
            norms.append(norm)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + rnd)
        std = noise_std(dp["noise_multiplier"], dp["clipping_norm"], sensitivity_clients(weights))
        noised, noise_norm = add_noise(self.method.aggregate(clipped, weights, rnd), std, gen)
        self.dp_round = {"update_norm": norms, "clipped": [c for c, n in zip(accepted, norms, strict=True)
                                                           if n > dp["clipping_norm"]],
                         "noise_std": std, "noise_norm": noise_norm}
        return noised

    def previous(self) -> State:
        """Each aggregated tensor's previous global value: the latest update's, or before its first aggregation what
        every client started from (`initial`, where known): what DP clips against and a server optimizer steps
        from."""
        return {**self.initial, **self.latest}

    def adopt(self, mean: State) -> State:
        """The round's update from its aggregate `mean` (the server optimizer's step, fed.server_optimizer, from the
        previous values, or where a tensor has none yet what every client started from; `none`: the mean itself),
        kept as the latest."""
        t0 = time.perf_counter()
        update = self.opt.step(self.previous(), mean)
        self.opt_s = time.perf_counter() - t0
        self.latest = overlay(self.latest, update)
        return update

    def record(self, rnd: int, exchange: Exchange, update: State, ev: dict[str, Any] | None, t_train: float,
               t_eval: float, wall_s: float, clients: Mapping[int, State] | None = None) -> dict[str, Any]:
        """The round's record. `clients`: the accepted participants' states after the download, by client, where
        the runner holds them (the in-process runner), for the spectrum of updates that need them."""
        r = self.resolved
        accepted = sorted(exchange.uploads)
        out = round_record(rnd, self.method.name, r, self.cfg.fed.clients, exchange.stats, ev, t_train, t_eval, wall_s)
        if rnd == 0:
            return out
        k, t = self.cfg.fed.local_steps, self.cfg.train
        out.update({
            "lr": t.lr * lr_factor(t.lr_schedule, global_step(rnd, 0, k), self.cfg.fed.rounds * k, t.warmup_steps),
            "n_averaged": len(accepted), "participants": accepted, "excluded": exchange.excluded,
            "trained": sorted(self.method.trained(rnd)), "uploaded": sorted(self.method.uploaded(rnd)),
            "bytes_up": sum(payload_bytes(exchange.uploads[c]) for c in accepted),
            "bytes_down": bytes_down(self.method, update, [r.ranks[c] for c in accepted]),
        })
        if self.opt.on:  # what the server's step cost (none: records as before)
            out["server_opt_s"] = self.opt_s
        if self.resolved.dp is not None:  # the norms of the participants' changes, who was clipped, the noise added
            out["dp"] = self.dp_round
        held = None if clients is None else [clients[c] for c in accepted]
        out.update(spectrum(self.method, update, held, [r.gammas[c] for c in accepted],
                            [self.weights[c] for c in accepted], min(r.ranks)))
        if self.adaptive:  # the gammas this round trained with, and the N_eff measured at its aggregation
            used = module_gammas(self.cfg.lora.alpha, r.ranks[0], self.trained_n_eff) if self.trained_n_eff else {}
            out["gamma"] = {c: sum(used.values()) / len(used) if used else g for c, g in out["gamma"].items()}
            out["adaptive"] = {"mode": self.cfg.lora.adaptive, "n_eff": dict(self.n_eff), "gamma_trained": used}
        return out
