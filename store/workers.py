"""Which workers are alive: each worker process upserts its row every few seconds."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.tables import WorkerRow, utcnow


def worker_seen(
    session: Session,
    name: str,
    *,
    hostname: str,
    pid: int,
    device: str,
    concurrency: int = 1,
    now: datetime | None = None,
) -> None:
    """Record that worker ``name`` is alive (registering it, or re-registering after a restart)
    and how many jobs it runs at once."""
    if concurrency < 1:
        raise ValueError(f"a worker runs at least one job at once, not {concurrency}")
    now = now or utcnow()
    row = session.get(WorkerRow, name)
    if row is None or row.pid != pid:
        if row is not None:
            session.delete(row)
            session.flush()
        session.add(
            WorkerRow(
                name=name,
                hostname=hostname,
                pid=pid,
                device=device,
                concurrency=concurrency,
                started_at=now,
                last_seen_at=now,
            )
        )
        return
    row.last_seen_at, row.stopped_at, row.device = now, None, device
    row.concurrency = concurrency


def worker_stopped(session: Session, name: str, *, now: datetime | None = None) -> None:
    session.execute(
        sa.update(WorkerRow).where(WorkerRow.name == name).values(stopped_at=now or utcnow())
    )


def live_workers(
    session: Session, within: timedelta, *, now: datetime | None = None
) -> list[WorkerRow]:
    """Workers seen within ``within`` that have not said they stopped."""
    query = sa.select(WorkerRow).where(_alive(within, now)).order_by(WorkerRow.name)
    return list(session.scalars(query))


def live_slots(session: Session, within: timedelta, *, now: datetime | None = None) -> int:
    """Jobs the live workers (as in ``live_workers``) can run at once, all together."""
    total = sa.func.coalesce(sa.func.sum(WorkerRow.concurrency), 0)
    return int(session.execute(sa.select(total).where(_alive(within, now))).scalar_one())


def _alive(within: timedelta, now: datetime | None) -> sa.ColumnElement[bool]:
    return sa.and_(
        WorkerRow.last_seen_at >= (now or utcnow()) - within, WorkerRow.stopped_at.is_(None)
    )
