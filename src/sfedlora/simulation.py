"""The in-process runner: every client on one base model, trained in batched groups of G, round after round
of the protocol (runtime.protocol), into the run folder (runtime.rundir). Set-up is runtime.setup's."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sfedlora.client import local
from sfedlora.config import RunConfig, to_dict
from sfedlora.core.adaptive import init_sq_norms
from sfedlora.core.metrics import PRIMARY, personal
from sfedlora.core.state import State, select
from sfedlora.data.batching import ClientSampler
from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, grouping, records, rundir
from sfedlora.runtime.clientstore import ClientStore, Current, Held
from sfedlora.runtime.protocol import Exchange, Server, evaluated_clients, non_finite
from sfedlora.runtime.resolve import Resolved, resume_mismatch
from sfedlora.runtime.setup import setup
from sfedlora.runtime.tracking import Trackers


def _print(line: str) -> None:
    print(line, flush=True)


class Simulation:
    def __init__(self, cfg: RunConfig, out_dir: Path, echo: Callable[[str], None] = _print,
                 progress: bool = True, resolved: Resolved | None = None,
                 figures: Callable[[Path], list[Path]] | None = None, group: str = "",
                 redraw_damaged: bool = False) -> None:
        """Set up a run; `resolved`: the description a resumed run recorded (its group sizes are kept);
        `redraw_damaged`: clients whose state file is damaged start again from their seed (runtime.clientstore);
        `figures`: makes the run's figures for its trackers (cfg.tracking) at the end; `group`: the trackers'
        group (a sweep's name)."""
        self.cfg, self.out_dir, self.echo, self.progress = cfg, Path(out_dir), echo, progress
        self.figures, self.group = figures, group
        self.setup = s = setup(cfg)  # everything that can fail on user input, before the run folder exists
        self.method, self.model, self.tok, self.device, self.task = s.method, s.model, s.tok, s.device, s.task
        n = cfg.fed.clients
        self.encoded = [s.encoded[c] for c in range(n)]
        self.train_ex = [e.train for e in self.encoded]
        self.resolved = s.resolve()
        if resolved is not None:  # a resumed run keeps its client store (runs before the store kept memory)
            self.resolved = replace(self.resolved, client_store=resolved.client_store)
        self.store = ClientStore(n, self._fresh, self._sampler,
                                 self.out_dir if self.resolved.client_store == "disk" else None, redraw_damaged)
        self.server = Server(cfg, self.method, self.resolved)
        if self.resolved.scaling == "adaptive" and cfg.lora.adaptive == "cumulative":
            self.server.init_sq_norms = init_sq_norms(h.adapters for h in self.store)
        self.merged: dict[str, torch.Tensor] = {}  # FLoRA: fp32 sum of the updates merged into W0 so far
        if resolved is not None and (changed := resume_mismatch(resolved, self.resolved)):
            raise SfedloraError(f"{self.out_dir} cannot be resumed here: " + "; ".join(changed) + ". Its data, model "
                                "or resolved settings differ from the run's (a changed data file, another model "
                                "revision, a machine where `auto` resolves differently); start a new run instead")
        self.evaluated = evaluated_clients(cfg)
        groups = resolved.groups if resolved is not None and resolved.groups else self._plan_groups()
        self.resolved = self.server.resolved = replace(self.resolved, groups=groups)

    @property
    def groups(self) -> grouping.GroupPlan:
        assert self.resolved.groups is not None
        return self.resolved.groups

    @property
    def weights(self) -> list[float]:
        return self.server.weights

    @property
    def states(self) -> Sequence[State]:
        """Every client's adapters now, with the server's latest update downloaded (runtime.clientstore)."""
        return Current(self.store.n, self.state)

    def state(self, c: int, held: Held | None = None) -> State:
        """Client c's adapters now: as it last trained them (`held`, else the store's) with the latest update
        downloaded (protocol step 6, done when the client is next used: the same state as a download every
        round, as the Flower nodes do it)."""
        raw = (held or self.store.get(c)).adapters
        latest = self.server.latest
        return self.method.download(raw, latest, self.resolved.gammas[c], 0) if latest else raw

    # ---- set-up -------------------------------------------------------------------------------------
    def _fresh_adapters(self, c: int, rnd: int = 0) -> State:
        """Client c's fresh adapters (B = 0); `rnd` > 0 re-draws (FLoRA's restarts)."""
        r = self.resolved
        return local.fresh_state(self.model, self.cfg, r.init, c, r.ranks[c], max(r.ranks), rnd)

    def _sampler(self, c: int) -> ClientSampler:
        return local.sampler(self.cfg, c, self.setup.clients[c].n_train)

    def _fresh(self, c: int) -> Held:
        return Held(self._fresh_adapters(c), {}, self._sampler(c))

    def _plan_groups(self) -> grouping.GroupPlan:
        longest = max((ex for rows in self.train_ex for ex in rows), key=lambda e: len(e["input_ids"]))
        return grouping.plan(self.cfg.train.group_size, self.cfg.train.group_memory, self.cfg.train.batch_size,
                             self.cfg.eval.batch_size, self.cfg.fed.clients, self.device, self.bytes_per_row,
                             len(longest["input_ids"]))

    def bytes_per_row(self) -> int:
        longest = max((ex for rows in self.train_ex for ex in rows), key=lambda e: len(e["input_ids"]))
        widest = max(range(self.cfg.fed.clients), key=lambda c: self.resolved.ranks[c])
        return grouping.bytes_per_row(self.model, self.tok, self.task, longest, self.cfg.train.batch_size,
                                      self._fresh_adapters(widest), self.resolved.gammas[widest], self.device,
                                      self.cfg.train.gradient_checkpointing)

    def _groups(self, members: list[int], kind: str = "train") -> list[list[int]]:
        g = self.groups.train if kind == "train" else self.groups.eval
        return [members[i:i + g] for i in range(0, len(members), g)]

    # ---- one round ----------------------------------------------------------------------------------
    def _train(self, rnd: int, members: list[int], bar: Any) -> Iterator[tuple[int, Held, dict[str, Any]]]:
        """Protocol step 2 for the round's participants, G at a time: each one's new state (not yet stored)
        and training statistics, a group at a time. Their data orders move on in place."""
        trained = self.method.trained(rnd)
        for group in self._groups(members):
            held = [self.store.get(c) for c in group]
            states, opt, rows = local.train_clients(
                self.model, self.tok, self.task, self.cfg, trained,
                [self.state(c, h) for c, h in zip(group, held, strict=True)],
                [self.server.gamma(c) for c in group], [h.opt for h in held], [h.sampler for h in held],
                [self.train_ex[c] for c in group], self.device,
                on_step=None if bar is None else lambda: bar.update(1), rnd=rnd)
            for c, h, state, o, row in zip(group, held, states, opt, rows, strict=True):
                yield c, Held(state, o, h.sampler), row

    def _evaluate(self) -> dict[str, Any]:
        """Every client's own model on its splits; the global model (where one exists) on the pooled splits."""
        rows: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        for group in self._groups(self.evaluated, "eval"):
            out = local.evaluate_clients(self.model, self.tok, self.task, self.cfg, [self.state(c) for c in group],
                                         [self.server.gamma(c) for c in group], [self.encoded[c] for c in group],
                                         self.device)
            for split in rows:
                rows[split] += out[split]
            for c, shown in zip(group, out["samples"], strict=True) if "samples" in out else ():
                self.samples[c] = shown["samples"]
        ev: dict[str, Any] = {"personal": personal(rows)}
        if len(self.evaluated) < self.cfg.fed.clients:  # eval.clients: whose the rows are (as a Flower run's)
            ev["evaluated_clients"] = self.evaluated
        if self.cfg.eval.global_model and not self.resolved.heterogeneous:
            local.install(self.model, [self.method.global_model(self.states, self.weights)], [self.server.gamma(0)],
                          self.device)
            ev["global"] = {}
            for split in ("val", "test"):  # the clients' splits pooled, and their decoded samples pooled
                pooled = sorted((ex for e in self.encoded for ex in getattr(e, split)),
                                key=lambda ex: len(ex["input_ids"]))
                decoded = sorted((ex for e in self.encoded for ex in e.decode.get(split, [])),
                                 key=lambda ex: ex["n_prompt"])
                ev["global"][split] = local.evaluate_split(self.model, self.tok, self.task, self.cfg, [pooled],
                                                           [decoded], self.device)[0]
        return ev

    def _round(self, rnd: int, bar: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        gammas = self.resolved.gammas
        ex = Exchange(selected=self.server.select())
        accepted: dict[int, Held] = {}  # the round's accepted participants as they trained
        for c, held, stats in self._train(rnd, ex.selected, bar):  # step 2; steps 3 and 4 as each group ends
            reason = non_finite(stats["loss"], held.adapters)
            if reason:  # back to its state before the round; its data order moves on
                ex.excluded.append({"client": c, "reason": reason})
                held = replace(self.store.get(c), sampler=held.sampler)
                self.echo(f"  round {rnd} excludes client {c}: {reason}")
            else:
                ex.uploads[c], ex.stats[c] = self.method.upload(held.adapters, gammas[c], rnd), stats
                accepted[c] = held
            self.store.put(c, held)  # a stopped run resumes from its checkpoint, never from these
        t_train = time.perf_counter() - t0
        self.server.require(rnd, ex)
        update = self.server.aggregate(rnd, ex)  # the server's latest: step 6 happens as each client is next used
        self.server.rescale(ex, update)
        downloaded = {c: self.state(c, accepted[c]) for c in sorted(accepted)}  # not read back from the store
        if self.method.merges_into_base:  # FLoRA: W0 += dW, then every client restarts from fresh adapters
            self._merge(update)
            for c in range(self.store.n):
                held = self.store.get(c)
                head = select(self.state(c, held), {"head"})
                self.store.put(c, Held({**self._fresh_adapters(c, rnd), **head}, {}, held.sampler))
        t1 = time.perf_counter()
        ev = self._evaluate() if (rnd % self.cfg.eval.every == 0 or rnd == self.cfg.fed.rounds) else None
        return self.server.record(rnd, ex, update, ev, t_train, time.perf_counter() - t1, time.perf_counter() - t0,
                                  clients=downloaded)

    def _merge(self, update: State) -> None:
        """FLoRA: add the round's dW to the fp32 sum of merged updates; every adapted weight becomes W0 + sum."""
        for m, d in self.method.merged(update).items():
            self.merged[m] = self.merged[m] + d if m in self.merged else d
        self._apply_merged()

    def _apply_merged(self) -> None:
        from sfedlora.adapters.inject import lora_layers

        layers = lora_layers(self.model)
        with torch.no_grad():
            for m, layer in layers.items():  # a layer merged before but not in the sum now goes back to W0 (a
                if m in self.merged:         # checkpoint tried and refused must leave no update in the base)
                    layer.merge_base(self.merged[m])
                elif layer.w0 is not None:
                    layer.merge_base(torch.zeros_like(layer.w0, dtype=torch.float32))

    # ---- checkpoints --------------------------------------------------------------------------------
    def _snapshot(self, rnd: int) -> dict[str, Any]:
        return {"round": rnd, **self.store.snapshot(rnd), "latest": self.server.latest, "merged": self.merged,
                "participation_rng": self.server.rng.getstate(), "torch_rng": torch.get_rng_state(),
                "n_eff": self.server.n_eff}

    def _resume_from(self, snap: dict[str, Any], recorded: set[int], first: int) -> None:
        """Check a verified checkpoint against this run (checkpoint.check), then restore it; raises if either
        fails."""
        expected = None if self.store.on_disk else [{k: (tuple(v.shape), str(v.dtype))
                                                     for k, v in self._fresh_adapters(c).items()}
                                                    for c in range(self.store.n)]
        reason = checkpoint.check(snap, self.cfg.fed.rounds, recorded, first, expected)
        if reason:
            raise SfedloraError(reason)
        self._restore(snap)

    def _restore(self, snap: dict[str, Any]) -> int:
        self.store.restore(snap)  # a checkpoint from before the store kept states downloaded, and no latest
        self.server.latest = snap.get("latest", {})
        self.merged = snap["merged"]
        self._apply_merged()
        self.server.rng.setstate(snap["participation_rng"])
        self.server.n_eff = dict(snap.get("n_eff", {}))
        torch.set_rng_state(snap["torch_rng"])
        return int(snap["round"])

    def _save_adapters(self, best_round: int | None = None, kept_round: int | None = None) -> None:
        """The adapters a run folder keeps (final, best round, kept round): every client's (memory store); or
        (disk store) hard links to the trained clients' files, and the latest update that export downloads
        into them or into a never-trained client's seeded fresh adapters: no cost per client but a link."""
        out, r = self.out_dir, self.resolved
        if not self.store.on_disk:
            rundir.save_adapters(out, list(self.states), r, self.merged, best_round, kept_round)
            return
        folder = rundir.clients_folder(rundir.adapters_path(out, best_round, kept_round))
        self.store.link_into(folder)
        rundir.save_adapters(out, [], r, self.merged, best_round, kept_round, held={
            "clients": self.store.took_part(), "clients_folder": str(folder.relative_to(out)),
            "latest": self.server.latest})

    def _round_zero(self) -> dict[str, Any]:
        """Round 0: no training, B = 0, so every client is the base model; its evaluation is the baseline."""
        t0 = time.perf_counter()
        ev = self._evaluate()
        return self.server.record(0, Exchange(selected=[]), {}, ev, 0.0, time.perf_counter() - t0,
                                  time.perf_counter() - t0)

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run all rounds; with resume=True continue a run folder from its last checkpoint."""
        cfg, out = self.cfg, self.out_dir
        first = 0 if cfg.eval.initial else 1
        history: list[dict[str, Any]] = []
        if resume:
            if rundir.finished(out):
                raise SfedloraError(f"{out} is a finished run (it has summary.json); nothing to resume")
            recorded = rundir.records(out)
            snap = checkpoint.load(out, lambda snap: self._resume_from(snap, {r["round"] for r in recorded}, first))
            if snap is not None:
                first = int(snap["round"]) + 1
                history = [r for r in recorded if r["round"] < first]
            self.echo(f"resuming {out} at round {first}" if snap else
                      f"no checkpoint in {out}: starting it again from round {first}")
        descriptions = [self.setup.descriptions[c] for c in range(cfg.fed.clients)]
        writer = rundir.start(out, cfg, self.resolved, descriptions, keep=history)
        self.samples: dict[int, list[dict[str, str]]] = {}
        trackers = Trackers(cfg.tracking, out, {**to_dict(cfg), "resolved": self.resolved.as_record()},
                            self.group) if cfg.tracking else None
        if trackers:  # a resumed run's trackers get its earlier rounds too
            for record in history:
                trackers.log(record)
        for line in records.describe_run(self.method.name, self.resolved, cfg, descriptions):
            self.echo(line)
        metric, _ = PRIMARY[self.task]
        n_groups = len(self._groups(list(range(cfg.fed.clients_per_round or cfg.fed.clients))))
        self.echo(records.header(metric))
        bar = tqdm(total=(cfg.fed.rounds - max(first - 1, 0)) * n_groups * cfg.fed.local_steps, desc="local steps",
                   unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for rnd in range(first, cfg.fed.rounds + 1):
            record = self._round(rnd, bar) if rnd else self._round_zero()
            if self.store.redrawn:  # clients whose damaged state file made them start again from their seed
                record["redrawn_clients"], self.store.redrawn = sorted(set(self.store.redrawn)), []
            writer.write(record)
            if record.get("eval") and self.samples:
                rundir.write_samples(out, rnd, self.samples)
            history.append(record)
            if trackers:
                trackers.log(record)
            (bar.write if self.progress else self.echo)(records.row(record, metric))
            sys.stdout.flush()  # rows show up as rounds finish, also when stdout is a file
            if record.get("eval") and records.best_round(history, self.task) == rnd:  # for export --best
                self._save_adapters(best_round=rnd)
            if cfg.checkpoint_every and (rnd % cfg.checkpoint_every == 0 or rnd == cfg.fed.rounds):
                if cfg.keep_round_adapters:  # for export --round; before the checkpoint that a resume starts after
                    self._save_adapters(kept_round=rnd)
                checkpoint.save(out, self._snapshot(rnd))
                self.store.prune()
        bar.close()
        self._save_adapters()
        summary = records.summary(self.method.name, self.resolved, cfg, history, time.perf_counter() - start)
        rundir.finish(out, summary)  # last: the run is complete
        if trackers:
            trackers.finish(self.figures(out) if self.figures else [])
        return summary
