"""One record log for both runners: the run folder's records (metrics.jsonl, samples), the history the summary is
chosen from, the trackers, and the console (the run description, a row per round)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfedlora.config import RunConfig, to_dict
from sfedlora.core.metrics import PRIMARY
from sfedlora.runtime import records, rundir
from sfedlora.runtime.resolve import Resolved
from sfedlora.runtime.tracking import Trackers


class RunLog:
    def __init__(self, out: Path, cfg: RunConfig, resolved: Resolved, descriptions: list[dict[str, Any]],
                 title: str, echo: Callable[[str], None], history: Sequence[dict[str, Any]] = (),
                 group: str = "", also: Sequence[str] = ()) -> None:
        """Start the run folder with the records of `history` (a resumed run's rounds so far), open the trackers
        (cfg.tracking; `group`: a sweep's name) with those rounds, and print the run description and the table's
        header. `title`: the method as the description names it; `also`: lines the runner adds to the description."""
        self.out, self.cfg, self.resolved, self.echo = Path(out), cfg, resolved, echo
        self.history = list(history)
        self.writer = rundir.start(self.out, cfg, resolved, descriptions, keep=self.history)
        self.trackers = Trackers(cfg.tracking, self.out, {**to_dict(cfg), "resolved": resolved.as_record()},
                                 group) if cfg.tracking else None
        if self.trackers:
            for record in self.history:
                self.trackers.log(record)
        for line in [*records.describe_run(title, resolved, cfg, descriptions), *also]:
            echo(line)
        self.metric = PRIMARY[resolved.task][0]
        self.show = echo  # where a round's row goes (a runner with a progress bar prints above it)
        echo(records.header(self.metric))
        self.start = time.perf_counter()

    def write(self, record: dict[str, Any], samples: dict[int, list[dict[str, str]]] | None = None) -> None:
        """A finished round: its record (made durable), its clients' sample completions, the trackers, the row."""
        self.writer.write(record)
        if record.get("eval") and samples:
            rundir.write_samples(self.out, record["round"], samples)
        self.history.append(record)
        if self.trackers:
            self.trackers.log(record)
        self.show(records.row(record, self.metric))
        sys.stdout.flush()  # rows show up as rounds finish, also when stdout is a file

    def is_best(self, record: dict[str, Any]) -> bool:
        """Whether `record` (written last) is the best round on validation so far."""
        return bool(record.get("eval")) and records.best_round(self.history, self.resolved.task) == record["round"]

    def finish(self, method: str) -> dict[str, Any]:
        """The summary, written last: the run is complete."""
        summary = records.summary(method, self.resolved, self.cfg, self.history, time.perf_counter() - self.start)
        rundir.finish(self.out, summary)
        return summary

    def close(self, figures: Sequence[Path] = ()) -> None:
        """Close the trackers, with the run's figures (drawn from the finished run folder by whoever ran it)."""
        if self.trackers:
            self.trackers.finish(figures)
            self.trackers = None
