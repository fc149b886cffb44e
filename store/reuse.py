"""Reusable trainings: a tenant's finished trainings, found by the hash of their inputs.

Like the other query modules, these functions work inside the caller's transaction and never
commit. The first job to record a key keeps it: a later record is a no-op on every backend
(``INSERT ... ON CONFLICT DO NOTHING``), so two jobs finishing the same training at once never
fail on the primary key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store._sql import rowcount
from store.tables import JobRow, JSONType, ReusableTraining, UTCDateTime, utcnow

_COLUMNS = ("tenant_id", "key", "job_id", "files", "created_at")


def find_training(session: Session, tenant_id: str, key: str) -> ReusableTraining | None:
    """The tenant's training with this key; another tenant's is never found."""
    query = sa.select(ReusableTraining).where(
        ReusableTraining.tenant_id == tenant_id, ReusableTraining.key == key
    )
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def record_training(
    session: Session,
    tenant_id: str,
    key: str,
    job_id: str,
    files: Mapping[str, str],
    *,
    now: datetime | None = None,
) -> bool:
    """Record ``files`` (name → path relative to the artifact root) of ``job_id`` under ``key``.

    True if this call stored it; False when the tenant already has the key (the first writer
    keeps it) or the job is not the tenant's, so a row never points at another tenant's job.
    """
    source = sa.select(
        sa.literal(tenant_id, sa.String()),
        sa.literal(key, sa.String()),
        JobRow.id,
        sa.literal(dict(files), JSONType),
        sa.literal(now or utcnow(), UTCDateTime()),
    ).where(JobRow.id == job_id, JobRow.tenant_id == tenant_id)
    dialect = session.get_bind().dialect.name
    statement: sa.Insert
    if dialect == "postgresql":
        statement = (
            postgresql.insert(ReusableTraining)
            .from_select(_COLUMNS, source)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        )
    elif dialect == "sqlite":
        statement = (
            sqlite.insert(ReusableTraining)
            .from_select(_COLUMNS, source)
            .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
        )
    else:
        raise NotImplementedError(f"reusable trainings need SQLite or PostgreSQL, not {dialect}")
    # RETURNING, since SQLAlchemy promises a row count for UPDATE and DELETE only (psycopg's
    # INSERT answers -1).
    return session.execute(statement.returning(ReusableTraining.key)).first() is not None


def forget_training(session: Session, tenant_id: str, key: str, job_id: str) -> bool:
    """Drop the key if ``job_id`` still holds it (its files are gone), so that the next job to
    finish that training can record it; False when the key is gone or another job's."""
    result = session.execute(
        sa.delete(ReusableTraining)
        .where(
            ReusableTraining.tenant_id == tenant_id,
            ReusableTraining.key == key,
            ReusableTraining.job_id == job_id,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def forget_job(session: Session, job_id: str) -> int:
    """Drop every key the job holds (before its artifacts are removed); returns how many."""
    result = session.execute(
        sa.delete(ReusableTraining)
        .where(ReusableTraining.job_id == job_id)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result)
