"""The in-process runner: one base model, all clients trained in batched groups, rounds of
local training -> upload -> aggregate (the method's rule) -> download, with evaluation and records.

Outputs in the run folder: config.yaml (resolved), partitions.json, metrics.jsonl (one record per
round, appended as rounds finish) and summary.json, written last: a folder without it is unfinished.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from sfedlora.adapters.inject import group_parameters, inject_adapters, lora_layers
from sfedlora.client import local as client
from sfedlora.client.losses import group_loss
from sfedlora.client.optim import ClientOptState
from sfedlora.client.train import adapters_training
from sfedlora.config import RunConfig, to_dict
from sfedlora.core import metrics
from sfedlora.core.aggregate import client_weights
from sfedlora.core.spectrum import spectrum_stats
from sfedlora.core.state import payload_bytes, select
from sfedlora.data.batching import collate
from sfedlora.data.partition import ClientData, describe, make_clients
from sfedlora.data.sources import TaskData, load_task
from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, protocol, records
from sfedlora.runtime.grouping import (
    GroupPlan,
    busy_group,
    eval_group,
    free_bytes,
    memory_caps,
    saved_activation_bytes,
)
from sfedlora.runtime.models import load_model
from sfedlora.runtime.resolve import check, resolve, resolve_device, resolve_precision

State = dict[str, torch.Tensor]


def _print(line: str) -> None:
    print(line, flush=True)


class Simulation:
    def __init__(self, cfg: RunConfig, out_dir: Path, echo: Callable[[str], None] = _print,
                 progress: bool = True, groups: GroupPlan | None = None) -> None:
        self.cfg, self.out_dir, self.echo, self.progress = cfg, Path(out_dir), echo, progress
        self.method = check(cfg)  # fail fast on method / init / rank errors
        self.device = resolve_device(cfg.model.device)
        torch.manual_seed(cfg.seed)
        # Everything that can fail on user input happens before the run folder is created.
        self.data: TaskData = load_task(cfg.data, cfg.seed)
        self.clients: list[ClientData] = make_clients(self.data.records, cfg.fed.clients, cfg.data, cfg.seed)
        self.resolved = resolve(cfg, self.method, [d.n_train for d in self.clients])
        self.precision = resolve_precision(cfg.model.precision, self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.model, self.tok = load_model(cfg.model.name, self.data.task, max(2, len(self.data.label_names)), dtype)
        self.targets = inject_adapters(self.model, cfg.lora.targets, cfg.lora.dropout,
                                       head=self.data.task == "classification")
        self.model.to(self.device)
        self._encode()
        self.states = self._init_states()
        self.opt_states: list[ClientOptState] = [{} for _ in self.clients]
        self.samplers = [client.sampler(cfg, c, d.n_train) for c, d in enumerate(self.clients)]
        self.weights = client_weights([d.n_train for d in self.clients], cfg.fed.weighting)
        self.participation_rng = random.Random(cfg.seed + 17)
        self.merged: dict[str, torch.Tensor] = {}  # FLoRA: sum of the updates merged into W0 so far
        self.groups = groups or self._plan_groups()  # a resumed run passes the plan it recorded

    # ---- set-up -------------------------------------------------------------------------------------
    def _encode(self) -> None:
        self.encoded = [client.encode(d, self.data.task, self.tok, self.cfg, c) for c, d in enumerate(self.clients)]
        self.train_ex = [e.train for e in self.encoded]

    def _init_states(self, rnd: int = 0) -> list[State]:
        """Fresh adapters (B = 0) for every client; `rnd` > 0 re-draws (FLoRA's restarts)."""
        r_max = max(self.resolved.ranks)
        return [client.fresh_state(self.model, self.cfg, self.resolved.init, c, r, r_max, rnd)
                for c, r in enumerate(self.resolved.ranks)]

    def _load(self, clients: list[int], states: list[State] | None = None) -> None:
        """Install clients' adapters, zero-padded to the group's largest rank."""
        states = states if states is not None else [self.states[c] for c in clients]
        client.install(self.model, states, [self.resolved.gammas[c] for c in clients], self.device)

    def _plan_groups(self) -> GroupPlan:
        """G for training and evaluation: as configured, or (auto) enough clients to keep the device busy
        within the memory free now that the model and every client's state are in place (sfedlora.runtime.grouping)."""
        g, n = self.cfg.train.group_size, len(self.clients)
        if isinstance(g, int):
            return GroupPlan(train=min(g or n, n), eval=min(g or n, n), rule="fixed" if g else "all")
        b, eb = self.cfg.train.batch_size, self.cfg.eval.batch_size
        per_row = self.bytes_per_row()
        free = free_bytes(self.device)
        budget = int(self.cfg.train.group_memory * free)
        cap, eval_cap = memory_caps(per_row, budget, b, eb, n)
        row_tokens = len(self._longest()["input_ids"])
        g_train = busy_group(self.device.type, row_tokens, b, cap)
        return GroupPlan(train=g_train, eval=eval_group(g_train, b, eb, eval_cap), rule="auto", cap=cap,
                         row_tokens=row_tokens, bytes_per_row=per_row, free_bytes=free, budget_bytes=budget)

    def _longest(self) -> dict[str, Any]:
        return max((ex for rows in self.train_ex for ex in rows), key=lambda e: len(e["input_ids"]))

    def bytes_per_row(self) -> int:
        """Activation bytes one training row saves for backward, worst case: a batch of the longest training
        example, the widest client's adapters, A, B and head all trained (train_group sets them per round)."""
        b = self.cfg.train.batch_size
        batch = {k: v.to(self.device) for k, v in collate([self._longest()] * b, self.tok.pad_token_id).items()}
        self._load([max(range(len(self.clients)), key=lambda c: self.resolved.ranks[c])])
        for p in group_parameters(self.model).values():
            p.requires_grad_(True)
        with adapters_training(self.model):  # as in training: the adapters' dropout saves its masks
            saved = saved_activation_bytes(self.model, lambda: group_loss(self.model, batch, 1, self.data.task))
        return -(-saved // b)

    def _groups(self, members: list[int], kind: str = "train") -> list[list[int]]:
        g = self.groups.train if kind == "train" else self.groups.eval
        return [members[i:i + g] for i in range(0, len(members), g)]

    def _participants(self) -> list[int]:
        m = self.cfg.fed.clients_per_round
        everyone = list(range(len(self.clients)))
        return everyone if not m else sorted(self.participation_rng.sample(everyone, m))

    # ---- one round ----------------------------------------------------------------------------------
    def _train(self, rnd: int, members: list[int], bar: Any) -> dict[int, Any]:
        trained = self.method.trained(rnd)
        stats: dict[int, Any] = {}
        for group in self._groups(members):
            new, opt, rows = client.train_clients(
                self.model, self.tok, self.data.task, self.cfg, trained, [self.states[c] for c in group],
                [self.resolved.gammas[c] for c in group], [self.opt_states[c] for c in group],
                [self.samplers[c] for c in group], [self.train_ex[c] for c in group], self.device,
                on_step=None if bar is None else lambda: bar.update(1))
            for c, state, o, row in zip(group, new, opt, rows):
                self.states[c], self.opt_states[c], stats[c] = state, o, row
        return stats

    def _evaluate(self) -> dict[str, Any]:
        task = self.data.task
        metric, _ = metrics.PRIMARY[task]
        personal: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        for group in self._groups(list(range(len(self.clients))), "eval"):
            rows = client.evaluate_clients(self.model, self.tok, task, self.cfg, [self.states[c] for c in group],
                                           [self.resolved.gammas[c] for c in group],
                                           [self.encoded[c] for c in group], self.device)
            for split in personal:
                personal[split] += rows[split]
        out: dict[str, Any] = {"personal": metrics.personal(personal)}
        if self.cfg.eval.global_model and not self.resolved.heterogeneous:
            glob = self.method.global_model(self.states, self.weights)
            self._load([0], [glob])
            out["global"] = {}
            for split in ("val", "test"):  # the clients' splits pooled, and their decoded samples pooled
                pooled = sorted((ex for e in self.encoded for ex in getattr(e, split)),
                                key=lambda ex: len(ex["input_ids"]))
                decoded = sorted((ex for e in self.encoded for ex in e.decode.get(split, [])),
                                 key=lambda ex: len(ex["prompt_ids"]))
                out["global"][split] = client.evaluate_split(self.model, self.tok, task, self.cfg, [pooled], [decoded],
                                                             self.device)[0]
        assert metric in out["personal"]["test"]
        return out

    def _round(self, rnd: int, bar: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        members = self._participants()
        before = {c: (self.states[c], self.opt_states[c]) for c in members}
        stats = self._train(rnd, members, bar)
        t_train = time.perf_counter() - t0
        excluded = self._exclude_non_finite(members, stats, before)
        members = [c for c in members if c not in {e["client"] for e in excluded}]
        uploaded = self.method.uploaded(rnd)
        gammas = self.resolved.gammas
        uploads = [self.method.upload(self.states[c], gammas[c], rnd) for c in members]
        weights = [self.weights[c] for c in members]
        update = self.method.aggregate(uploads, weights, rnd)
        self.states = [self.method.download(s, update, gammas[c], rnd) for c, s in enumerate(self.states)]
        spectrum = self._spectrum(update, members, weights)
        if self.method.merges_into_base:  # FLoRA: W0 += dW, then every client restarts from fresh adapters
            self._merge(update)
            fresh = self._init_states(rnd)
            self.states = [{**fresh[c], **select(s, {"head"})} for c, s in enumerate(self.states)]
            self.opt_states = [{} for _ in self.clients]
        bytes_up = sum(payload_bytes(u) for u in uploads)
        bytes_down = protocol.bytes_down(self.method, update, [self.resolved.ranks[c] for c in members])
        t1 = time.perf_counter()
        last = rnd == self.cfg.fed.rounds
        ev = self._evaluate() if (rnd % self.cfg.eval.every == 0 or last) else None
        t_eval = time.perf_counter() - t1
        return {**self._record(rnd, stats, ev, t_train, t_eval, t0), **spectrum, "n_averaged": len(members),
                "participants": members, "excluded": excluded, "trained": sorted(self.method.trained(rnd)),
                "uploaded": sorted(uploaded), "bytes_up": bytes_up, "bytes_down": bytes_down}

    def _record(self, rnd: int, stats: dict[int, Any], ev: dict[str, Any] | None, t_train: float, t_eval: float,
                t0: float) -> dict[str, Any]:
        return records.round_record(rnd, self.method.name, self.resolved, len(self.clients), stats, ev, t_train,
                                    t_eval, time.perf_counter() - t0)

    def _exclude_non_finite(self, members: list[int], stats: dict[int, Any],
                            before: dict[int, tuple[State, ClientOptState]]) -> list[dict[str, Any]]:
        """Clients whose loss or adapters became non-finite sit this aggregation out: their state goes back
        to what it was before the round, with the reason logged. Too few left stops the run clearly."""
        excluded = []
        for c in members:
            reason = None
            if not math.isfinite(stats[c]["loss"]):
                reason = f"non-finite training loss {stats[c]['loss']}"
            else:
                bad = [k for k, v in self.states[c].items() if not bool(torch.isfinite(v).all())]
                if bad:
                    reason = f"non-finite values in {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
            if reason:
                excluded.append({"client": c, "reason": reason})
                self.states[c], self.opt_states[c] = before[c]
                self.echo(f"  round excludes client {c}: {reason}")
        if len(members) - len(excluded) < self.cfg.fed.min_clients:
            raise SfedloraError(f"only {len(members) - len(excluded)} clients left with finite updates "
                                f"(fed.min_clients = {self.cfg.fed.min_clients}): "
                                + "; ".join(f"client {e['client']}: {e['reason']}" for e in excluded)
                                + ". Lower train.lr or enable train.grad_clip.")
        return excluded

    def _spectrum(self, update: State, members: list[int], weights: list[float]) -> dict[str, float]:
        """Rank-collapse diagnostics of the aggregated update, averaged over adapted modules: the share of
        its energy (squared singular values) beyond the smallest client rank, and its effective rank."""
        deltas = self.method.global_delta(update, [self.states[c] for c in members],
                                          [self.resolved.gammas[c] for c in members], weights)
        r_min = min(self.resolved.ranks)
        stats = [spectrum_stats(d, r_min) for d in deltas.values()]
        if not stats:
            return {}
        return {key: sum(s[key] for s in stats) / len(stats) for key in ("energy_beyond_rmin", "effective_rank")}

    def _merge(self, update: State) -> None:
        """FLoRA: add the round's dW to the fp32 sum of merged updates; every adapted weight becomes W0 + sum."""
        for m, d in self.method.merged(update).items():
            self.merged[m] = self.merged[m] + d if m in self.merged else d
        self._apply_merged()

    def _apply_merged(self) -> None:
        layers = lora_layers(self.model)
        with torch.no_grad():
            for m, total in self.merged.items():
                layers[m].merge_base(total)

    # ---- checkpoints --------------------------------------------------------------------------------
    def _snapshot(self, rnd: int) -> dict[str, Any]:
        return {"round": rnd, "states": self.states, "opt_states": self.opt_states, "merged": self.merged,
                "samplers": [(sm.rng.getstate(), sm.order, sm.pos, sm.epoch) for sm in self.samplers],
                "participation_rng": self.participation_rng.getstate(), "torch_rng": torch.get_rng_state()}

    def _restore(self, snap: dict[str, Any]) -> int:
        self.states, self.opt_states = snap["states"], snap["opt_states"]
        self.merged = snap["merged"]
        self._apply_merged()
        for sm, (rng_state, order, pos, epoch) in zip(self.samplers, snap["samplers"]):
            sm.rng.setstate(rng_state)
            sm.order, sm.pos, sm.epoch = order, pos, epoch
        self.participation_rng.setstate(snap["participation_rng"])
        torch.set_rng_state(snap["torch_rng"])
        return int(snap["round"])

    def _round_zero(self) -> dict[str, Any]:
        """Round 0: no training, B = 0, so every client is the base model; its evaluation is the baseline."""
        t0 = time.perf_counter()
        ev = self._evaluate()
        return self._record(0, {}, ev, 0.0, time.perf_counter() - t0, t0)

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run all rounds; with resume=True continue a run folder from its last checkpoint."""
        cfg = self.cfg
        first = 0 if cfg.eval.initial else 1
        history: list[dict[str, Any]] = []
        if resume:
            snap = checkpoint.load(self.out_dir)
            if (self.out_dir / "summary.json").exists():
                raise SfedloraError(f"{self.out_dir} is a finished run (it has summary.json); nothing to resume")
            if snap is not None:
                first = self._restore(snap) + 1
                history = [r for r in records.read_jsonl(self.out_dir / "metrics.jsonl") if r["round"] < first]
            self.echo(f"resuming {self.out_dir} at round {first}" if snap else
                      f"no checkpoint in {self.out_dir}: starting it again from round {first}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**self.resolved.as_record(), "task": self.data.task, "label_names": self.data.label_names,
                    "targets": self.targets, "device": str(self.device), "precision": self.precision,
                    "groups": self.groups.as_dict()}
        (self.out_dir / "config.yaml").write_text(
            yaml.safe_dump({**to_dict(cfg), "resolved": resolved}, sort_keys=False))
        key = "label" if self.data.task == "classification" else (
            cfg.data.partition_by if cfg.data.partition_by in self.data.records[0] else cfg.data.category_field)
        parts = describe(self.clients, key, self.data.label_names or None)
        (self.out_dir / "partitions.json").write_text(json.dumps(parts, indent=1))
        rank_text = cfg.lora.rank if not self.resolved.heterogeneous else self.resolved.ranks
        gamma_text = (f"{self.resolved.gamma:.4g}" if not self.resolved.heterogeneous else
                      "[" + ", ".join(f"{g:.4g}" for g in self.resolved.gammas) + "]")
        self.echo(f"{self.method.name}: scaling {self.resolved.scaling}, gamma = {gamma_text} "
                  f"(alpha {cfg.lora.alpha}, r {rank_text}, N {self.resolved.n_averaged}), "
                  f"init {self.resolved.init}, {len(self.targets)} adapted modules, {self.data.task} on "
                  f"{self.data.source}, device {self.device}")
        for p in parts:
            hist = p["histogram"]
            if len(hist) > 6:  # e.g. 61 instruction subtasks: show the largest
                top = sorted(hist.items(), key=lambda kv: -kv[1])[:4]
                hist = f"{len(p['histogram'])} {key} values, largest: " + ", ".join(f"{k} {v}" for k, v in top)
            self.echo(f"  client {p['client']}: train {p['train']:>5} val {p['val']:>4} test {p['test']:>4}  "
                      f"{hist or ''}")
        metric, _ = metrics.PRIMARY[self.data.task]
        writer = records.JsonlWriter(self.out_dir / "metrics.jsonl")
        for r in history:  # a resumed run keeps the rounds its checkpoint covers
            writer.write(r)
        n_groups = len(self._groups(list(range(cfg.fed.clients_per_round or cfg.fed.clients))))
        self.echo(records.header(metric))
        bar = tqdm(total=(cfg.fed.rounds - max(first - 1, 0)) * n_groups * cfg.fed.local_steps, desc="local steps",
                   unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for rnd in range(first, cfg.fed.rounds + 1):
            record = self._round(rnd, bar) if rnd else self._round_zero()
            writer.write(record)
            history.append(record)
            (bar.write if self.progress else self.echo)(records.row(record, metric))
            sys.stdout.flush()  # rows show up as rounds finish, also when stdout is a file
            if cfg.checkpoint_every and (rnd % cfg.checkpoint_every == 0 or rnd == cfg.fed.rounds):
                checkpoint.save(self.out_dir, self._snapshot(rnd))
        bar.close()
        checkpoint.atomic_save({"states": self.states, "ranks": self.resolved.ranks, "gammas": self.resolved.gammas,
                                "merged": self.merged, "targets": self.targets}, self.out_dir / "adapters.pt")
        summary = {"method": self.method.name, **resolved, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha,
                   "clients": cfg.fed.clients, "rounds": cfg.fed.rounds, "seed": cfg.seed,
                   **records.summarise(history, self.data.task), "wall_s": time.perf_counter() - start}
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))  # last: the run is complete
        return summary
