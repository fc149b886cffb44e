"""The reconciler: the database, not the broker, decides which jobs still need a worker.

It re-enqueues running jobs whose worker stopped heartbeating (killed, machine lost, or an
embedded broker that never redelivers) and queued jobs nobody took although a live worker has a
free slot (a message lost with a broker that lost its data); a worker has as many slots as jobs
it runs at once. Jobs merely waiting behind busy workers are left alone. Enqueueing twice is
harmless: workers claim with a compare-and-set, and a redelivered running job is only taken over
once its heartbeat is stale. Each job goes to the queue of its ``training.device``
(``store.queue.queue_for``); this is also how jobs whose messages sit in a queue no worker
consumes any more (the single ``lth.jobs`` queue before an upgrade) reach a worker again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store.jobs import count_running_jobs, stale_queued_jobs, stale_running_jobs
from store.tables import JobRow
from store.workers import live_slots

log = logging.getLogger(__name__)


def _device(job: JobRow) -> str:
    """The job's ``training.device`` from its stored spec (absent means the default, auto)."""
    training: Any = job.spec.get("training") or {}
    return str(training.get("device", "auto"))


class Reconciler:
    """Call ``tick()`` periodically (or ``start()`` a daemon thread that does)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        enqueue: Callable[[str, str], None],
        *,
        stale_after_s: float,
        requeue_queued_after_s: float,
        every_s: float,
    ) -> None:
        self.sessions = sessions
        self.enqueue = enqueue
        self.stale_after = timedelta(seconds=stale_after_s)
        self.queued_after = timedelta(seconds=requeue_queued_after_s)
        self.every_s = every_s
        self._last_sent: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[str]:
        """Re-enqueue what needs it; returns the job ids sent. A job is sent again at most once
        per staleness period, and queued jobs only as many as the live workers have free slots."""
        with self.sessions() as session:
            running = [(j.id, _device(j)) for j in stale_running_jobs(session, self.stale_after)]
            queued = [(j.id, _device(j)) for j in stale_queued_jobs(session, self.queued_after)]
            if queued:
                idle = live_slots(session, self.stale_after) - count_running_jobs(session)
                queued = queued[: max(idle, 0)]
        now = time.monotonic()
        horizon = 2 * max(self.stale_after, self.queued_after).total_seconds()
        self._last_sent = {j: t for j, t in self._last_sent.items() if now - t < horizon}
        sent = []
        for (job_id, device), period in [(j, self.stale_after) for j in running] + [
            (j, self.queued_after) for j in queued
        ]:
            if now - self._last_sent.get(job_id, -1e18) < period.total_seconds():
                continue
            self.enqueue(job_id, device)
            self._last_sent[job_id] = now
            sent.append(job_id)
        if sent:
            log.warning("re-enqueued %d job(s) without a live worker: %s", len(sent), sent)
        return sent

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.every_s):
                try:
                    self.tick()
                except Exception:  # the database may be briefly away; try again next tick
                    log.warning("reconciler tick failed", exc_info=True)

        self._thread = threading.Thread(target=loop, name="lth-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
