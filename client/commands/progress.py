"""The live view of a job being waited on: round k of n, variant, step, density, accuracy, ETA.

On a terminal it is one line redrawn in place. Otherwise (CI logs, pipes) a line is printed when
the status, round or variant changes and at most every ``LOG_EVERY_S`` seconds in between, so
logs stay readable. It goes to stderr, leaving stdout to the command's result.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from api_schemas.jobs import Job
from client.commands.render import duration
from client.sdk import Client

#: Seconds between two log lines about the same phase of a job (non-terminal output).
LOG_EVERY_S = 10.0
#: Metrics shown as "accuracy", in order of preference.
_ACCURACY_KEYS = ("test_accuracy", "accuracy", "val_accuracy")


class ProgressView:
    """Renders successive snapshots of one job; use as a context manager around ``wait``."""

    def __init__(self, client: Client, job_id: str, console: Console) -> None:
        self.client = client
        self.job_id = job_id
        self.console = console
        self.live: Live | None = None
        self.last_phase: tuple[object, ...] | None = None
        self.last_logged = 0.0
        self.event_cursor: int | None = None
        #: (round, density) from the latest ``round`` event: pruning's effect so far.
        self.density: tuple[int, float] | None = None

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def _catch_up_rounds(self) -> None:
        for event in self.client.iter_events(self.job_id, self.event_cursor):
            self.event_cursor = event.id
            density = event.data.get("density")
            if event.type == "round" and isinstance(density, int | float):
                self.density = (int(event.data.get("round", 0)), float(density))

    def describe(self, job: Job) -> str:
        """One line about ``job``."""
        parts = [f"{job.id} {job.status}"]
        if job.cancel_requested and job.status == "running":
            parts.append("cancel requested")
        p = job.progress
        if p is not None and job.status == "running":
            parts += [
                f"round {p.round} of {max(p.rounds_total - 1, 0)}",
                p.variant,
                f"step {p.step}/{p.steps_total}",
            ]
        if self.density is not None:
            parts.append(f"density {self.density[1]:.1%} (round {self.density[0]})")
        if p is not None:
            accuracy = next((p.metrics[k] for k in _ACCURACY_KEYS if k in p.metrics), None)
            if accuracy is not None:
                parts.append(f"accuracy {accuracy:.1%}")
            if job.status == "running":
                parts.append(f"{p.fraction:.0%}, ETA {duration(p.eta_seconds)}")
        return " | ".join(parts)

    def update(self, job: Job) -> None:
        """Show a changed snapshot (the ``on_progress`` callback of ``Client.wait``)."""
        self._catch_up_rounds()
        line = self.describe(job)
        if self.live is not None:
            self.live.update(Text(line))
            return
        p = job.progress
        phase = (job.status, job.cancel_requested, self.density, p and (p.round, p.variant))
        now = time.monotonic()
        if phase != self.last_phase or now - self.last_logged >= LOG_EVERY_S:
            self.console.print(Text(line))
            self.last_phase, self.last_logged = phase, now
