"""A job's append-only event log, read by pollers and the SSE stream with an id cursor."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api_schemas.jobs import EventType
from store.tables import EventRow, JobRow, utcnow

MAX_EVENT_PAGE = 1000


def add_event(
    session: Session,
    job_id: str,
    type: EventType,
    data: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    attempt: int | None = None,
) -> EventRow | None:
    """Append an event.

    Locks the job row first so that, on PostgreSQL, events of one job get their ids in commit
    order: a reader paging with ``after_id`` can then never skip an event committed late.
    With ``attempt`` (a worker's fencing token, as for :func:`store.jobs.heartbeat`) the event
    is written only while that attempt runs the job; None when it no longer does.
    """
    owner = session.execute(
        sa.select(JobRow.attempt, JobRow.status).where(JobRow.id == job_id).with_for_update()
    ).one_or_none()
    if attempt is not None and (owner is None or tuple(owner) != (attempt, "running")):
        return None
    event = EventRow(job_id=job_id, type=type, data=dict(data or {}), created_at=now or utcnow())
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session, job_id: str, *, after_id: int = 0, limit: int = 100
) -> list[EventRow]:
    """Events of ``job_id`` with id > ``after_id``, oldest first, at most ``limit``."""
    limit = max(1, min(limit, MAX_EVENT_PAGE))
    query = (
        sa.select(EventRow)
        .where(EventRow.job_id == job_id, EventRow.id > after_id)
        .order_by(EventRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def logged_rounds(session: Session, job_id: str) -> set[int]:
    """The rounds of ``job_id`` that already have their ``round`` event: a resumed attempt
    finds its finished rounds again and must not log them twice."""
    query = sa.select(EventRow.data).where(EventRow.job_id == job_id, EventRow.type == "round")
    return {int(data["round"]) for data in session.scalars(query) if "round" in data}


def round_durations(session: Session) -> list[float]:
    """Wall times of every finished round (from ``round`` events), for the metrics histogram:
    all of them, so its counts only ever grow, as Prometheus requires."""
    query = sa.select(EventRow.data).where(EventRow.type == "round")
    durations = (data.get("wall_time_s") for data in session.scalars(query))
    return [float(d) for d in durations if isinstance(d, int | float)]
