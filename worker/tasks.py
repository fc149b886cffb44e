"""Celery tasks. The one task runs a job by id; everything else is in the store."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_sessionmaker
from store.queue import TASK_NAME
from worker.celery_app import celery_app, settings
from worker.handoff import sigterm_ends_the_task
from worker.priority import lower_for_training


@cache
def _sessions() -> sessionmaker[Session]:
    """One engine per process, created lazily in the child that runs the task."""
    engine = make_engine(
        settings.database_url,
        idle_in_transaction_timeout_s=settings.worker_transaction_timeout_s,
    )
    return make_sessionmaker(engine)


@celery_app.task(name=TASK_NAME, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: str) -> str:
    """Run (or resume) job ``job_id``; duplicates and stale deliveries do nothing."""
    with sigterm_ends_the_task():
        from worker.job_runner import JobRunner

        lower_for_training(settings.job_nice, sched_idle=settings.job_sched_idle)
        name = settings.worker_name or str(self.request.hostname or "worker")
        return JobRunner(settings, _sessions(), name).run(job_id)
