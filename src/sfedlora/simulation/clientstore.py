"""Where the in-process runner keeps its clients between rounds: each client's adapters (as it last trained
them, before any download), optimiser state and data order.

`memory` holds every client as tensors, drawn at the start: the cost grows with the total number of
clients N. `disk` holds none: a client that has trained is one state file, `<run>/clients/client-<c>.safetensors`
(runtime.statefile: checksummed, no pickle), read when the client trains or is evaluated and written after it
trained; a client that never trained is its fresh adapters and data order, drawn again when needed (they are
seeded per client). Memory then grows with the round's participants, disk with the clients that took part.

A checkpoint of a disk store is a folder of hard links to the files of that moment (a file is never changed
in place: a write replaces it), so it costs no copy; restore links them back. So a client's file damaged on
disk (it fails its checksum) is damaged in every checkpoint that links it: the run stops, naming it, and
`--resume DIR --redraw-damaged` starts such a client again from its seed, recorded in the round's record.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sfedlora.client.step import Held
from sfedlora.core.state import State
from sfedlora.data.batching import ClientSampler
from sfedlora.errors import SfedloraError
from sfedlora.runtime import statefile
from sfedlora.runtime.statefile import file_name

FOLDER = "clients"
CHECKPOINTS = "checkpoints"  # <run>/checkpoints/clients-round-<t>: the disk store as a checkpoint saw it
CHECKPOINT_NAME = re.compile(r"clients-round-(\d+)")


class Current(Sequence[State]):
    """Every client's adapters now, computed when read (`get(c)`): a list's interface over a store."""

    def __init__(self, n: int, get: Callable[[int], State]) -> None:
        self.n, self.get = n, get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, c: Any) -> Any:
        if isinstance(c, slice):
            return [self.get(i) for i in range(self.n)[c]]
        if not -self.n <= c < self.n:
            raise IndexError(c)
        return self.get(c % self.n)


class ClientStore:
    """N clients by index; `fresh(c)` draws client c as it starts and `sampler(c)` its fresh data order (both
    seeded, so the same every time)."""

    def __init__(self, n: int, fresh: Callable[[int], Held], sampler: Callable[[int], ClientSampler],
                 run_dir: Path | None = None, redraw_damaged: bool = False) -> None:
        """`run_dir` None: in memory (every client drawn now); else on disk under run_dir/clients.
        `redraw_damaged`: a client whose file fails verification starts again from its seed (listed in
        `redrawn`) instead of stopping the run."""
        self.n, self.fresh, self.sampler, self.redraw_damaged = n, fresh, sampler, redraw_damaged
        self.redrawn: list[int] = []
        self.folder = None if run_dir is None else Path(run_dir) / FOLDER
        self.held: dict[int, Held] = {c: fresh(c) for c in range(n)} if self.folder is None else {}
        self.trained: set[int] = set()  # disk: the clients with a file

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def path(self, c: int) -> Path:
        assert self.folder is not None
        return self.folder / file_name(c)

    def get(self, c: int) -> Held:
        if self.folder is None:
            return self.held[c]
        if c not in self.trained:
            return self.fresh(c)
        try:
            saved = statefile.load(self.path(c))
        except statefile.StateError as exc:
            if not self.redraw_damaged:
                raise SfedloraError(f"client {c}'s state file is damaged ({exc}); the checkpoints link the same file, "
                                    "so none holds an intact copy. `sfedlora run --resume RUN --redraw-damaged` "
                                    "starts such a client again from its seed (recorded in the round's record)"
                                    ) from None
            warnings.warn(f"client {c}'s state file is damaged ({exc}): it starts again from its seed", stacklevel=2)
            self.trained.discard(c)
            self.redrawn.append(c)
            return self.fresh(c)
        return Held(saved["adapters"], saved["opt"], self.sampler(c).restore(saved["sampler"]))

    def put(self, c: int, held: Held) -> None:
        if self.folder is None:
            self.held[c] = held
            return
        saved = {"adapters": held.adapters, "opt": held.opt, "sampler": held.sampler.saved()}
        statefile.save(self.path(c), saved)
        self.trained.add(c)

    def took_part(self) -> list[int]:
        """The clients whose state moved from their fresh one (disk); every client (memory)."""
        return sorted(self.trained) if self.folder is not None else list(range(self.n))

    def __iter__(self) -> Iterator[Held]:
        """Every client in order, one at a time (a disk store reads or draws each as it goes)."""
        return (self.get(c) for c in range(self.n))

    def link_into(self, target: Path) -> None:
        """Disk: `target` becomes a folder of hard links to the trained clients' files as they are now (no copy;
        a later write replaces a store file, the link keeps this one), replacing any earlier `target`."""
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for c in sorted(self.trained):
            os.link(self.path(c), tmp / file_name(c))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)

    # ---- checkpoints --------------------------------------------------------------------------------
    def snapshot(self, rnd: int) -> dict[str, Any]:
        """What a checkpoint keeps of the store: the states themselves (memory), or a folder of hard links to
        this round's files (disk), named in the checkpoint."""
        if self.folder is None:
            held = [self.held[c] for c in range(self.n)]
            return {"states": [h.adapters for h in held], "opt_states": [h.opt for h in held],
                    "samplers": [h.sampler.saved() for h in held]}
        name = f"{CHECKPOINTS}/clients-round-{rnd}"
        self.link_into(self.folder.parent / name)
        return {"store": name, "store_clients": sorted(self.trained)}

    def restore(self, snap: dict[str, Any]) -> None:
        if self.folder is None:
            for c, (a, o, s) in enumerate(zip(snap["states"], snap["opt_states"], snap["samplers"], strict=True)):
                self.held[c] = Held(a, o, self.sampler(c).restore(s))
            return
        if "store" not in snap:
            raise SfedloraError("this checkpoint holds its clients in itself (fed.client_store=memory), not on disk")
        source = self.folder.parent / snap["store"]
        clients = sorted(int(c) for c in snap["store_clients"])
        missing = [c for c in clients if not (source / file_name(c)).exists()]
        if missing:
            raise SfedloraError(f"{source} lacks the files of clients {missing[:10]} that its checkpoint names")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        for c in clients:
            os.link(source / file_name(c), self.path(c))
        self.trained = set(clients)

    def prune(self) -> None:
        """Disk: keep the two newest checkpoint folders (the newest checkpoint's and the previous one's), and
        drop what a killed checkpoint left half made."""
        root = None if self.folder is None else self.folder.parent / CHECKPOINTS
        if root is None or not root.exists():
            return
        rounds = []
        for p in root.iterdir():
            if (m := CHECKPOINT_NAME.fullmatch(p.name)) is not None:
                rounds.append(int(m.group(1)))
            elif ".tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)
        for rnd in sorted(rounds)[:-2]:
            shutil.rmtree(root / f"clients-round-{rnd}", ignore_errors=True)
