"""The in-process runner: the transport of the round loop (runtime.rounds) that runs the client step (client.step)
for every client on one base model, in batched groups of G, into the run folder (runtime.rundir). Set-up is
runtime.setup's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sfedlora.adapters.inject import set_merged
from sfedlora.client import local, step
from sfedlora.client.probe import set_attention
from sfedlora.client.step import Held
from sfedlora.config import RunConfig
from sfedlora.core.adaptive import init_sq_norms
from sfedlora.core.metrics import personal
from sfedlora.core.state import State
from sfedlora.data.batching import ClientSampler
from sfedlora.data.encode import pooled
from sfedlora.errors import SfedloraError
from sfedlora.runtime import checkpoint, rundir
from sfedlora.runtime.protocol import Exchange, Server, evaluated_clients, known_start
from sfedlora.runtime.resolve import Resolved, resume_mismatch
from sfedlora.runtime.rounds import Reply, run_rounds
from sfedlora.runtime.runlog import RunLog
from sfedlora.runtime.setup import setup
from sfedlora.simulation import grouping
from sfedlora.simulation.clientstore import ClientStore, Current


def _print(line: str) -> None:
    print(line, flush=True)


class Simulation:
    """The transport of the round loop (runtime.rounds) for clients held in this process: the client step for batched
    groups, evaluation in a pass of its own."""

    piggyback = False

    def __init__(self, cfg: RunConfig, out_dir: Path, echo: Callable[[str], None] = _print,
                 progress: bool = True, resolved: Resolved | None = None,
                 group: str = "",
                 redraw_damaged: bool = False) -> None:
        """Set up a run; `resolved`: the description a resumed run recorded (its group sizes are kept);
        `redraw_damaged`: clients whose state file is damaged start again from their seed (simulation.clientstore);
        `group`: the trackers' group (a sweep's name)."""
        self.cfg, self.out_dir, self.echo, self.progress, self.group = cfg, Path(out_dir), echo, progress, group
        self.setup = s = setup(cfg)  # everything that can fail on user input, before the run folder exists
        set_attention(s, recorded=None if resolved is None else resolved.attention)  # model.attention
        self.method, self.model, self.tok, self.device, self.task = s.method, s.model, s.tok, s.device, s.task
        n = cfg.fed.clients
        self.encoded = [s.encoded[c] for c in range(n)]
        self._now: dict[int, State] = {}  # the accepted participants' states under the latest update (adopted)
        self._accepted: dict[int, Held] = {}  # the round's accepted participants as they trained
        self.bar: Any = None  # the progress bar of local steps, while the run goes
        assert s.resolved is not None  # every client is held here
        self.resolved = s.resolved
        if resolved is not None:  # a resumed run keeps its client store (runs before the store kept memory)
            self.resolved = replace(self.resolved, client_store=resolved.client_store)
            if changed := resume_mismatch(resolved, self.resolved):
                raise SfedloraError(f"{self.out_dir} cannot be resumed here: " + "; ".join(changed) + ". Its data, "
                                    "model or resolved settings differ from the run's (a changed data file, another "
                                    "model revision, a machine where `auto` resolves differently); start a new run "
                                    "instead")
        self.store = ClientStore(n, self._fresh, self._sampler,
                                 self.out_dir if self.resolved.client_store == "disk" else None, redraw_damaged)
        groups = resolved.groups if resolved is not None and resolved.groups else grouping.plan_run(s, self.resolved)
        self.resolved = replace(self.resolved, groups=groups)  # complete: the Server gets it whole
        self.server = Server(cfg, self.method, self.resolved)
        if self.resolved.dp is not None or self.server.opt.on:  # round 1's previous values, where known
            self.server.initial = known_start(self._fresh_adapters(0), self.resolved.init)
        if self.resolved.scaling == "adaptive" and cfg.lora.adaptive == "cumulative":
            self.server.init_sq_norms = init_sq_norms(h.adapters for h in self.store)
        self.merged: dict[str, torch.Tensor] = {}  # FLoRA: fp32 sum of the updates merged into W0 so far
        self.evaluated = evaluated_clients(cfg)

    @property
    def groups(self) -> grouping.GroupPlan:
        assert self.resolved.groups is not None
        return self.resolved.groups

    @property
    def weights(self) -> list[float]:
        return self.server.weights

    @property
    def states(self) -> Sequence[State]:
        """Every client's adapters now, with the server's latest update downloaded (simulation.clientstore)."""
        return Current(self.store.n, self.state)

    def state(self, c: int, held: Held | None = None) -> State:
        """Client c's adapters now: as it last trained them (`held`, else the store's) with the server's latest update
        downloaded (client.step.current, done when the client is next used: the same state as a download every
        round, as the Flower nodes do it). A round's accepted participants are downloaded once, after the
        aggregation, for the record and the evaluation; other clients as they are used, and not kept (a disk
        store keeps no client in memory between rounds)."""
        return self._now[c] if c in self._now else self._current(c, held or self.store.get(c))

    def _current(self, c: int, held: Held) -> State:
        return step.current(self.method, held.adapters, self.server.latest, self.server.gamma(c))

    def _put(self, c: int, held: Held) -> None:
        self.store.put(c, held)
        self._now.pop(c, None)

    # ---- set-up -------------------------------------------------------------------------------------
    def _fresh_adapters(self, c: int, rnd: int = 0) -> State:
        """Client c's fresh adapters (B = 0); `rnd` > 0 re-draws (FLoRA's restarts)."""
        r = self.resolved
        return local.fresh_state(self.model, self.cfg, r.init, c, r.ranks[c], max(r.ranks), rnd)

    def _sampler(self, c: int) -> ClientSampler:
        return local.sampler(self.cfg, c, self.setup.clients[c].n_train)

    def _fresh(self, c: int) -> Held:
        return Held(self._fresh_adapters(c), {}, self._sampler(c))

    def _groups(self, members: list[int], kind: str = "train") -> list[list[int]]:
        g = {"train": self.groups.train, "eval": self.groups.eval, "decode": self.groups.decoding}[kind]
        return [members[i:i + g] for i in range(0, len(members), g)]

    # ---- the transport of the round loop (runtime.rounds): the client step for batched groups ----------
    def _train(self, rnd: int, members: list[int], bar: Any) -> Iterator[tuple[int, step.Trained]]:
        """The client step (train, check, upload) of the round's participants, G at a time; each one's round as
        its group ends. Their data orders move on in place."""
        for group in self._groups(members):
            held = [self.store.get(c) for c in group]
            out = step.step(self.setup, rnd, held, [self.state(c, h) for c, h in zip(group, held, strict=True)],
                            [self.server.gamma(c) for c in group], [self.encoded[c] for c in group], evaluate=False,
                            take_part=True, on_step=None if bar is None else lambda: bar.update(1))
            yield from zip(group, out.trained, strict=True)

    def _evaluate(self) -> tuple[dict[str, Any], dict[int, list[dict[str, str]]]]:
        """Every evaluated client's own model on its splits (the client step, evaluating: scored in evaluation
        groups, decoded greedily in decoding groups where those differ), and the global model (where one exists) on
        the pooled splits; with the clients' sample completions."""
        rows: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        samples: dict[int, list[dict[str, str]]] = {}
        decodes = self.task == "math" or any(e.samples for e in self.encoded)
        apart = decodes and self.groups.decoding != self.groups.eval  # scored and decoded in groups of their own
        for kind, parts in [("eval", ("score",)), ("decode", ("decode",))] if apart else [("eval", local.PARTS)]:
            at = 0
            for group in self._groups(self.evaluated, kind):
                out = step.step(self.setup, 0, [], [self.state(c) for c in group],
                                [self.server.gamma(c) for c in group], [self.encoded[c] for c in group],
                                evaluate=True, take_part=False, parts=parts)
                for split in rows:
                    if "score" in parts:
                        rows[split] += out.rows[split]
                    else:  # the decoding pass completes the scored rows (the same clients, in the same order)
                        for row, extra in zip(rows[split][at:at + len(group)], out.rows[split], strict=True):
                            row.update(extra)
                at += len(group)
                samples.update(zip(group, out.samples, strict=True) if out.samples is not None else ())
        ev: dict[str, Any] = {"personal": personal(rows)}
        if len(self.evaluated) < self.cfg.fed.clients:  # eval.clients: whose the rows are (as a Flower run's)
            ev["evaluated_clients"] = self.evaluated
        if self.cfg.eval.global_model and not self.resolved.heterogeneous:
            model = [self.method.global_model(self.states, self.weights)]
            pooled_rows = local.evaluate_clients(self.model, self.tok, self.task, self.cfg, model,
                                                 [self.server.gamma(0)], [pooled(self.encoded)], self.device)
            ev["global"] = {split: pooled_rows[split][0] for split in ("val", "test")}
        return ev, samples

    def exchange(self, rnd: int, selected: list[int], evaluate: int | None) -> Reply:
        """runtime.rounds: evaluate (a pass of its own) or train the round's participants."""
        reply = Reply(Exchange(selected=selected))
        t0 = time.perf_counter()
        if evaluate is not None:
            reply.ev, reply.samples = self._evaluate()
        t1 = time.perf_counter()
        self._accepted = {}
        for c, trained in self._train(rnd, selected, self.bar):
            if trained.upload is None:
                reply.exchange.excluded.append({"client": c, "reason": trained.excluded})
                self.echo(f"  round {rnd} excludes client {c}: {trained.excluded}")
            else:
                reply.exchange.uploads[c], reply.exchange.stats[c] = trained.upload, trained.stats
                self._accepted[c] = trained.held
            self._put(c, trained.held)  # a stopped run resumes from its checkpoint, never from these
        reply.t_eval, reply.t_train = t1 - t0, time.perf_counter() - t1
        return reply

    def aggregate(self, rnd: int, exchange: Exchange) -> State:
        return self.server.aggregate(rnd, exchange)

    def adopted(self, rnd: int, update: State, exchange: Exchange) -> dict[int, State]:
        """The latest update changed: every client's current state is computed again when next used. FLoRA merges
        the update into W0 and restarts every client from fresh adapters."""
        self._now = {c: self._current(c, self._accepted[c]) for c in sorted(self._accepted)}  # not read back
        downloaded = dict(self._now)
        if self.method.merges_into_base:  # FLoRA: W0 += dW, then every client restarts from fresh adapters
            self.merged = step.merge_sum(self.method, self.merged, update)
            set_merged(self.model, self.merged)
            for c in range(self.store.n):
                self._put(c, step.restarted(self.method, self.store.get(c), self.server.latest, self.server.gamma(c),
                                            self._fresh_adapters(c, rnd)))
        return downloaded

    def notes(self) -> dict[str, Any]:
        """Clients whose damaged state file made them start again from their seed, since the last record."""
        if not self.store.redrawn:
            return {}
        redrawn, self.store.redrawn = sorted(set(self.store.redrawn)), []
        return {"redrawn_clients": redrawn}

    def recorded(self, record: dict[str, Any], log: RunLog) -> None:
        """The best round's adapters (for export --best; unless keep_adapters is false), checkpoints and kept rounds'
        adapters."""
        rnd, every = record["round"], self.cfg.checkpoint_every
        if self.cfg.keep_adapters and log.is_best(record):
            self._save_adapters(best_round=rnd)
        if every and (rnd % every == 0 or rnd == self.cfg.fed.rounds):
            if self.cfg.keep_round_adapters:  # for export --round; before the checkpoint that a resume starts after
                self._save_adapters(kept_round=rnd)
            checkpoint.save(self.out_dir, self._snapshot(rnd))
            self.store.prune()

    # ---- checkpoints --------------------------------------------------------------------------------
    def _snapshot(self, rnd: int) -> dict[str, Any]:
        return {"round": rnd, **self.store.snapshot(rnd), "latest": self.server.latest, "merged": self.merged,
                "participation_rng": self.server.rng.getstate(), "torch_rng": torch.get_rng_state(),
                "n_eff": self.server.n_eff, **({"server_opt": self.server.opt.saved()} if self.server.opt.on else {})}

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
        self._now = {}
        self.server.latest = snap.get("latest", {})
        self.merged = snap["merged"]
        set_merged(self.model, self.merged)
        self.server.rng.setstate(snap["participation_rng"])
        self.server.n_eff = dict(snap.get("n_eff", {}))
        self.server.opt.restore(snap.get("server_opt"))
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

    # ---- the run ------------------------------------------------------------------------------------
    def run(self, resume: bool = False, close: bool = True) -> dict[str, Any]:
        """Run all rounds; with resume=True continue a run folder from its last checkpoint. `close` False leaves the
        trackers open (self.log.close(figures) closes them, with the figures its caller draws from the run)."""
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
        self.log = log = RunLog(out, cfg, self.resolved, descriptions, self.method.name, self.echo, history, self.group)
        n_groups = len(self._groups(list(range(cfg.fed.clients_per_round or cfg.fed.clients))))
        self.bar = tqdm(total=(cfg.fed.rounds - max(first - 1, 0)) * n_groups * cfg.fed.local_steps,
                        desc="local steps", unit="step", disable=not self.progress, leave=False)
        if self.progress:
            log.show = self.bar.write
        run_rounds(self.server, self, log, first, cfg.fed.rounds, cfg.eval.every)
        self.bar.close()
        if cfg.keep_adapters:
            self._save_adapters()
        summary = log.finish(self.method.name)
        if close:
            log.close()
        return summary
