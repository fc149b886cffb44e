"""Deleting finished jobs with their artifacts: on request, and once older than the TTL.

A job is deleted in an order that never strands anything. First its training-reuse rows go (in
their own transaction), so no other job is handed files that are about to vanish; then every
object under ``<job_id>/`` in the artifact store; then its rows (events and the job; reuse rows
again, in case). A failure part-way leaves a finished job with fewer files, and deleting it again
finishes the work; the other order could leave objects that no row leads to any more.

Jobs that reused a training of this one hold their own copies (hard links or copies in their own
folder, see ``worker.engine.reuse.copy_into``), so deleting the source never takes their files.
Only finished jobs are deleted: a queued or running one may still be writing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import TERMINAL_STATUSES
from store._sql import rowcount
from store.artifact_store import ArtifactStore
from store.reuse import forget_job
from store.tables import EventRow, JobRow, ReusableTraining, utcnow

log = logging.getLogger(__name__)

#: How often the API looks for expired jobs; retention is measured in days.
RETENTION_EVERY_S = 300.0
#: Most jobs one sweep deletes; the next sweep takes the rest.
SWEEP_LIMIT = 500


def expired_jobs(
    session: Session, older_than: timedelta, *, now: datetime | None = None, limit: int = 100
) -> list[str]:
    """Ids of finished jobs that finished longer than ``older_than`` ago, oldest first."""
    cutoff = (now or utcnow()) - older_than
    query = (
        sa.select(JobRow.id)
        .where(
            JobRow.status.in_(sorted(TERMINAL_STATUSES)),
            JobRow.finished_at.is_not(None),
            JobRow.finished_at < cutoff,
        )
        .order_by(JobRow.finished_at, JobRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def delete_job_rows(session: Session, job_id: str) -> bool:
    """Delete a finished job's rows: its events, reuse rows and the job itself (explicitly, not
    only by the foreign keys' cascade). False, deleting nothing, unless the job is finished."""
    finished = sa.select(JobRow.id).where(
        JobRow.id == job_id, JobRow.status.in_(sorted(TERMINAL_STATUSES))
    )
    if session.execute(finished).first() is None:
        return False
    for table in (EventRow, ReusableTraining):
        session.execute(
            sa.delete(table)
            .where(table.job_id == job_id)
            .execution_options(synchronize_session=False)
        )
    deleted = session.execute(
        sa.delete(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(sorted(TERMINAL_STATUSES)))
        .execution_options(synchronize_session=False)
    )
    return rowcount(deleted) == 1


def purge_job(sessions: sessionmaker[Session], store: ArtifactStore, job_id: str) -> bool:
    """Delete a finished job: reuse rows, then its objects, then its rows (see the module's
    docstring). False, touching nothing, when the job is missing or not finished."""
    with sessions.begin() as session:
        status = session.scalar(sa.select(JobRow.status).where(JobRow.id == job_id))
        if status not in TERMINAL_STATUSES:
            return False
        forget_job(session, job_id)
    removed = store.delete_prefix(f"{job_id}/")
    with sessions.begin() as session:
        deleted = delete_job_rows(session, job_id)
    log.info("job %s deleted with %d stored object(s)", job_id, removed)
    return deleted


class Retention:
    """Deletes finished jobs older than ``ttl_days``; ``sweep()`` once, or ``start()`` a daemon
    thread that sweeps every ``every_s``. Without a TTL it does nothing."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        *,
        ttl_days: float | None,
        every_s: float = RETENTION_EVERY_S,
        on_purged: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.ttl = None if ttl_days is None else timedelta(days=ttl_days)
        self.every_s = every_s
        self.on_purged = on_purged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, *, now: datetime | None = None) -> list[str]:
        """Delete the expired jobs; returns their ids. One job's failure skips only that job."""
        if self.ttl is None:
            return []
        with self.sessions() as session:
            ids = expired_jobs(session, self.ttl, now=now, limit=SWEEP_LIMIT)
        purged = []
        for job_id in ids:
            try:
                if not purge_job(self.sessions, self.store, job_id):
                    continue
            except Exception:
                log.warning("retention: deleting job %s failed", job_id, exc_info=True)
                continue
            purged.append(job_id)
            if self.on_purged is not None:
                self.on_purged(job_id)
        if purged:
            log.info("retention: deleted %d job(s) older than %s", len(purged), self.ttl)
        return purged

    def start(self) -> None:
        if self.ttl is None:
            return

        def loop() -> None:
            while not self._stop.wait(self.every_s):
                try:
                    self.sweep()
                except Exception:  # the database may be briefly away; try again next time
                    log.warning("retention sweep failed", exc_info=True)

        self._thread = threading.Thread(target=loop, name="lth-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
