"""Celery tasks. The one task runs a job by id; everything else is in the store."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_sessionmaker
from store.queue import TASK_NAME
from worker.celery_app import celery_app, settings


@cache
def _sessions() -> sessionmaker[Session]:
    """One engine per process, created lazily in the child that runs the task."""
    return make_sessionmaker(make_engine(settings.database_url))


def _lower_priority(niceness: int) -> None:
    """Run at ``niceness`` (never raising the priority it has). The process runs this one job
    (``worker_max_tasks_per_child = 1``), so nothing else of the worker is slowed."""
    current = os.nice(0)
    if current < niceness:
        os.nice(niceness - current)


@celery_app.task(name=TASK_NAME, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: str) -> str:
    """Run (or resume) job ``job_id``; duplicates and stale deliveries do nothing."""
    from worker.job_runner import JobRunner

    _lower_priority(settings.job_nice)
    name = settings.worker_name or str(self.request.hostname or "worker")
    return JobRunner(settings, _sessions(), name).run(job_id)
