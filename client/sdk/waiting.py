"""The rules of ``wait``: when a polled job counts as changed, when to stop, how long to sleep.

Shared by both clients so that their callbacks fire on exactly the same changes.
"""

from __future__ import annotations

import time

from api_schemas.jobs import TERMINAL_STATUSES, Job
from client.sdk.errors import WaitTimeout


def is_terminal(job: Job) -> bool:
    """Whether the job has reached a state it never leaves."""
    return job.status in TERMINAL_STATUSES


class JobWatch:
    """Follows one job's successive snapshots."""

    def __init__(self, poll_interval: float, timeout: float | None) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._last: tuple[object, ...] | None = None

    def changed(self, job: Job) -> bool:
        """Whether ``job`` differs from the previous snapshot in anything a user would see:
        status, progress (step, metrics, ETA), cancel request, attempt or outcome."""
        key = (
            job.status,
            job.attempt,
            job.cancel_requested,
            job.progress.model_dump_json() if job.progress else None,
            job.error,
            job.result,
        )
        if key == self._last:
            return False
        self._last = key
        return True

    def sleep_before_next(self, job: Job) -> float:
        """Seconds to sleep before the next poll; raises :class:`WaitTimeout` once past the
        deadline."""
        if self.deadline is None:
            return self.poll_interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            assert self.timeout is not None
            raise WaitTimeout(job, self.timeout)
        return min(self.poll_interval, left)
