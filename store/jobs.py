"""Job queries shared by the HTTP service and the workers.

Every function works inside the caller's transaction and never commits: wrap calls in
``with sessions.begin() as session:``. State changes are single-row compare-and-set UPDATEs
(``WHERE status = ...``), so a duplicate broker delivery or a racing cancel loses cleanly, and
each one appends a ``state`` event in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api_schemas.jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    JobError,
    JobResult,
    JobStatus,
    Progress,
)
from api_schemas.results import RunSummary
from api_schemas.spec import JobSpec
from store._sql import rowcount
from store.errors import (
    IdempotencyConflictError,
    InvalidCursorError,
    TooManyActiveJobsError,
    UnknownTenantError,
)
from store.events import add_event
from store.ids import looks_like_id, new_id
from store.tables import JobRow, Tenant, utcnow

MAX_PAGE = 100
JOB_ID_PREFIX = "job"

ClaimReason = Literal[
    "claimed", "not_found", "not_queued", "not_running", "heartbeat_fresh", "cancelled", "exhausted"
]
CancelOutcome = Literal["cancelled", "requested", "terminal"]


@dataclass(frozen=True)
class CreateResult:
    """The job, and whether this call created it (False: an idempotent replay)."""

    job: JobRow
    created: bool


@dataclass(frozen=True)
class ClaimResult:
    """Whether a worker may run the job; ``reason`` says why not, ``job`` is the row if any."""

    claimed: bool
    reason: ClaimReason
    job: JobRow | None


@dataclass(frozen=True)
class HeartbeatResult:
    """``owned`` False: another attempt took the job over (or it ended) — stop working on it."""

    owned: bool
    cancel_requested: bool


@dataclass(frozen=True)
class JobPage:
    """One page of :func:`list_jobs`."""

    jobs: list[JobRow]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class CancelResult:
    """What a cancel request did to the job."""

    outcome: CancelOutcome
    job: JobRow


# ----------------------------------------------------------------------------- creation, reads


def create_job(
    session: Session,
    tenant_id: str,
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    max_active: int | None = None,
    now: datetime | None = None,
) -> CreateResult:
    """Insert a queued job (and its first ``state`` event).

    With ``idempotency_key``: the same key with the same ``request_hash`` (default: the spec's
    hash) returns the existing job, ``created=False``; with another hash it raises
    :class:`IdempotencyConflictError`. ``max_active`` caps queued + running jobs
    (:class:`TooManyActiveJobsError`). The tenant row is locked first, so both checks hold under
    concurrent requests.
    """
    locked = session.execute(
        sa.select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()
    ).scalar_one_or_none()
    if locked is None:
        raise UnknownTenantError(tenant_id)
    request_hash = request_hash or spec.spec_hash()
    if idempotency_key is not None:
        existing = session.scalars(
            sa.select(JobRow).where(
                JobRow.tenant_id == tenant_id, JobRow.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if existing is not None:
            if existing.request_hash != request_hash:
                raise IdempotencyConflictError(idempotency_key, existing.id)
            return CreateResult(existing, created=False)
    if max_active is not None:
        active = count_active_jobs(session, tenant_id)
        if active >= max_active:
            raise TooManyActiveJobsError(active, max_active)
    now = now or utcnow()
    job = JobRow(
        id=new_id(JOB_ID_PREFIX),
        tenant_id=tenant_id,
        status="queued",
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        name=spec.name,
        labels=dict(spec.labels),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        attempt=0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "state", {"status": "queued"}, now=now)
    return CreateResult(job, created=True)


def get_job(session: Session, tenant_id: str, job_id: str) -> JobRow | None:
    """The tenant's job; None when missing *or* another tenant's (callers answer 404 alike), and
    without a query for text that is no job id at all."""
    if not looks_like_id(job_id, JOB_ID_PREFIX):
        return None
    return session.scalars(
        sa.select(JobRow).where(JobRow.id == job_id, JobRow.tenant_id == tenant_id)
    ).one_or_none()


def load_job(session: Session, job_id: str) -> JobRow | None:
    """Any tenant's job by id: for workers and reconcilers, never for request handlers."""
    return session.get(JobRow, job_id, populate_existing=True)


def job_spec(job: JobRow) -> JobSpec:
    """The stored spec, validated again (it was valid when accepted)."""
    return JobSpec.model_validate(job.spec)


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """Opaque cursor for the position just after ``(created_at, job_id)`` in newest-first order."""
    raw = json.dumps([created_at.isoformat(), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; :class:`InvalidCursorError` for anything else, so that
    nothing but a time and a job id from a cursor reaches the query."""
    message = "malformed cursor; pass next_cursor from a previous page"
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at_text, job_id = json.loads(raw)
        created_at = datetime.fromisoformat(created_at_text)
        aware = created_at.tzinfo is not None
        created_at = created_at.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidCursorError(message) from exc
    if not aware or not isinstance(job_id, str) or not looks_like_id(job_id, JOB_ID_PREFIX):
        raise InvalidCursorError(message)
    return created_at, job_id


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    statuses: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> JobPage:
    """The tenant's jobs, newest first, ``limit`` (1..100) per page.

    ``after`` is the previous page's ``next_cursor``; keyset pagination on (created_at, id), so
    jobs created meanwhile neither duplicate nor shift entries. ``labels`` match exactly (AND).
    """
    limit = max(1, min(limit, MAX_PAGE))
    query = sa.select(JobRow).where(JobRow.tenant_id == tenant_id)
    if statuses:
        query = query.where(JobRow.status.in_(list(statuses)))
    for key, value in (labels or {}).items():
        query = query.where(JobRow.__table__.c.labels[key].as_string() == value)
    if after:
        created_at, job_id = decode_cursor(after)
        query = query.where(
            sa.or_(
                JobRow.created_at < created_at,
                sa.and_(JobRow.created_at == created_at, JobRow.id < job_id),
            )
        )
    query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else None
    return JobPage(rows, cursor, has_more)


def count_active_jobs(session: Session, tenant_id: str) -> int:
    """Queued plus running jobs of the tenant (what the concurrency cap counts)."""
    query = sa.select(sa.func.count()).where(
        JobRow.tenant_id == tenant_id, JobRow.status.in_(sorted(ACTIVE_STATUSES))
    )
    return int(session.execute(query).scalar_one())


def count_running_jobs(session: Session) -> int:
    """Jobs running now, all tenants (the reconciler compares them with live workers)."""
    query = sa.select(sa.func.count()).select_from(JobRow).where(JobRow.status == "running")
    return int(session.execute(query).scalar_one())


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Jobs per status over all tenants (for metrics); statuses with no job are absent."""
    query = sa.select(JobRow.status, sa.func.count()).group_by(JobRow.status)
    return {status: int(count) for status, count in session.execute(query)}


# ----------------------------------------------------------------------------- cancellation


def request_cancel(session: Session, tenant_id: str, job_id: str) -> CancelResult | None:
    """Cancel the tenant's job: queued → cancelled at once; running → ``cancel_requested``
    (the worker stops at its next heartbeat); terminal → outcome ``terminal``, nothing changes.
    None when the job is not the tenant's.
    """
    if get_job(session, tenant_id, job_id) is None:
        return None
    now = utcnow()
    cancelled = session.execute(
        _update()
        .where(JobRow.id == job_id, JobRow.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
    )
    if rowcount(cancelled) == 1:
        add_event(session, job_id, "state", {"status": "cancelled", "reason": "cancel_requested"})
        return CancelResult("cancelled", _reload(session, job_id))
    requested = session.execute(
        _update()
        .where(JobRow.id == job_id, JobRow.status == "running", JobRow.cancel_requested.is_(False))
        .values(cancel_requested=True, updated_at=now)
    )
    if rowcount(requested) == 1:
        add_event(session, job_id, "message", {"message": "cancel requested"})
    job = _reload(session, job_id)
    return CancelResult("requested" if job.status == "running" else "terminal", job)


# ----------------------------------------------------------------------------- worker side


def claim_job(
    session: Session, job_id: str, worker_name: str, *, now: datetime | None = None
) -> ClaimResult:
    """Compare-and-set queued → running, attempt + 1. A second claim (duplicate delivery) does
    nothing and answers ``claimed=False`` with the reason."""
    now = now or utcnow()
    result = session.execute(
        _update()
        .where(JobRow.id == job_id, JobRow.status == "queued")
        .values(
            status="running",
            attempt=JobRow.attempt + 1,
            worker=worker_name,
            heartbeat_at=now,
            started_at=sa.func.coalesce(JobRow.started_at, now),
            updated_at=now,
        )
    )
    if rowcount(result) == 1:
        job = _reload(session, job_id)
        add_event(
            session,
            job_id,
            "state",
            {"status": "running", "attempt": job.attempt, "worker": worker_name},
            now=now,
        )
        return ClaimResult(True, "claimed", job)
    current = load_job(session, job_id)
    return ClaimResult(False, "not_found" if current is None else "not_queued", current)


def resume_claim(
    session: Session,
    job_id: str,
    worker_name: str,
    *,
    stale_after: timedelta,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> ClaimResult:
    """Take over a *running* job whose heartbeat is older than ``stale_after`` (its worker died
    and the broker, or the reconciler, delivered it again): attempt + 1, new worker.

    A job whose cancel was requested is cancelled instead (``reason="cancelled"``); one that has
    already used ``max_attempts`` fails with code ``too_many_attempts`` (``"exhausted"``).
    """
    now = now or utcnow()
    stale = sa.and_(
        JobRow.id == job_id,
        JobRow.status == "running",
        sa.or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < now - stale_after),
    )
    cancelled = session.execute(
        _update()
        .where(stale, JobRow.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=now, updated_at=now)
    )
    if rowcount(cancelled) == 1:
        add_event(session, job_id, "state", {"status": "cancelled", "reason": "cancel_requested"})
        return ClaimResult(False, "cancelled", _reload(session, job_id))
    if max_attempts is not None:
        exhausted = session.execute(
            _update()
            .where(stale, JobRow.attempt >= max_attempts)
            .values(
                status="failed",
                error_code="too_many_attempts",
                error_message=f"the job's worker was lost {max_attempts} "
                f"time{'' if max_attempts == 1 else 's'} (the attempts allowed); giving up",
                finished_at=now,
                updated_at=now,
            )
        )
        if rowcount(exhausted) == 1:
            add_event(session, job_id, "state", {"status": "failed", "code": "too_many_attempts"})
            return ClaimResult(False, "exhausted", _reload(session, job_id))
    resumed = session.execute(
        _update()
        .where(stale)
        .values(attempt=JobRow.attempt + 1, worker=worker_name, heartbeat_at=now, updated_at=now)
    )
    job = load_job(session, job_id)
    if rowcount(resumed) == 1 and job is not None:
        add_event(
            session,
            job_id,
            "state",
            {"status": "running", "attempt": job.attempt, "worker": worker_name, "resumed": True},
            now=now,
        )
        return ClaimResult(True, "claimed", job)
    if job is None:
        return ClaimResult(False, "not_found", None)
    reason: ClaimReason = "heartbeat_fresh" if job.status == "running" else "not_running"
    return ClaimResult(False, reason, job)


def release_job(
    session: Session, job_id: str, *, attempt: int, reason: str, now: datetime | None = None
) -> bool:
    """Hand a running job back to the queue (running → queued) when its worker stops on
    purpose: the next delivery claims it and resumes from its checkpoints. Fenced by
    ``attempt`` like every worker write; False when the job is no longer this attempt's."""
    now = now or utcnow()
    released = session.execute(
        _update()
        .where(JobRow.id == job_id, JobRow.status == "running", JobRow.attempt == attempt)
        .values(status="queued", worker=None, heartbeat_at=None, updated_at=now)
    )
    if rowcount(released) == 0:
        return False
    add_event(session, job_id, "state", {"status": "queued", "reason": reason}, now=now)
    return True


def heartbeat(
    session: Session,
    job_id: str,
    *,
    attempt: int,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> HeartbeatResult:
    """Record liveness (and progress) for attempt ``attempt`` of a running job.

    The attempt is a fencing token: after a takeover by :func:`resume_claim`, the old worker's
    heartbeats answer ``owned=False`` and it must stop. ``cancel_requested`` tells the training
    loop to stop cooperatively and call :func:`finish_job` with ``"cancelled"``.
    """
    now = now or utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
    if progress is not None:
        values["progress"] = progress.model_dump(mode="json")
    result = session.execute(
        _update()
        .where(JobRow.id == job_id, JobRow.status == "running", JobRow.attempt == attempt)
        .values(**values)
    )
    if rowcount(result) == 0:
        return HeartbeatResult(owned=False, cancel_requested=False)
    flag = session.execute(sa.select(JobRow.cancel_requested).where(JobRow.id == job_id))
    return HeartbeatResult(owned=True, cancel_requested=bool(flag.scalar_one()))


def finish_job(
    session: Session,
    job_id: str,
    status: JobStatus,
    *,
    attempt: int | None = None,
    result: JobResult | RunSummary | None = None,
    error: JobError | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a queued/running job to a final status; False if it was already final (or, with
    ``attempt``, no longer this attempt's). ``succeeded`` needs ``result``; ``failed`` needs
    ``error``."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"{status!r} is not a final status")
    if status == "succeeded" and result is None:
        raise ValueError("a succeeded job needs a result")
    if status == "failed" and error is None:
        raise ValueError("a failed job needs an error")
    now = now or utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now}
    if result is not None:
        values["result"] = result.model_dump(mode="json")
    if error is not None:
        values["error_code"], values["error_message"] = error.code, error.message
    where = [JobRow.id == job_id, JobRow.status.in_(sorted(ACTIVE_STATUSES))]
    if attempt is not None:
        where.append(JobRow.attempt == attempt)
    if rowcount(session.execute(_update().where(*where).values(**values))) == 0:
        return False
    data: dict[str, Any] = {"status": status}
    if error is not None:
        data["code"] = error.code
    add_event(session, job_id, "state", data, now=now)
    return True


def stale_running_jobs(
    session: Session, older_than: timedelta, *, now: datetime | None = None, limit: int = 100
) -> list[JobRow]:
    """Running jobs whose last heartbeat is older than ``older_than``: their worker is gone.
    The reconciler enqueues them again; the worker then calls :func:`resume_claim`."""
    cutoff = (now or utcnow()) - older_than
    query = (
        sa.select(JobRow)
        .where(
            JobRow.status == "running",
            sa.or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < cutoff),
        )
        .order_by(JobRow.heartbeat_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def stale_queued_jobs(
    session: Session, older_than: timedelta, *, now: datetime | None = None, limit: int = 100
) -> list[JobRow]:
    """Jobs queued for longer than ``older_than``: their broker message may be lost (failed
    enqueue, embedded broker, Redis that lost data). Enqueueing again is safe: claims are CAS."""
    cutoff = (now or utcnow()) - older_than
    query = (
        sa.select(JobRow)
        .where(JobRow.status == "queued", JobRow.updated_at < cutoff)
        .order_by(JobRow.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def _update() -> sa.Update:
    # The SQL is the compare-and-set; callers reload the row, so skip ORM session syncing.
    return sa.update(JobRow).execution_options(synchronize_session=False)


def _reload(session: Session, job_id: str) -> JobRow:
    job = session.get(JobRow, job_id, populate_existing=True)
    if job is None:  # pragma: no cover - called only after a successful UPDATE
        raise LookupError(job_id)
    return job
