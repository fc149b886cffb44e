"""Job queries against real SQLite and PostgreSQL: idempotency, caps, isolation, CAS claims."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import JobError, JobResult, Progress
from api_schemas.spec import JobSpec
from store import jobs
from store.errors import (
    IdempotencyConflictError,
    InvalidCursorError,
    TooManyActiveJobsError,
)
from store.events import list_events
from store.tables import Tenant, utcnow

Sessions = sessionmaker[Session]
SpecFactory = Callable[..., JobSpec]

RESULT = JobResult(
    ticket_round=2,
    ticket_density=0.64,
    ticket_accuracy=0.97,
    dense_accuracy=0.975,
    rounds_completed=2,
    stop_reason="rounds",
)


def _create(sessions: Sessions, tenant: Tenant, spec: JobSpec, **kwargs: object) -> str:
    with sessions.begin() as session:
        return jobs.create_job(session, tenant.id, spec, **kwargs).job.id  # type: ignore[arg-type]


def test_create_and_get(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _create(sessions, tenant, spec)
    assert job_id.startswith("job_") and len(job_id) == 30
    with sessions.begin() as session:
        job = jobs.get_job(session, tenant.id, job_id)
        assert job is not None
        assert job.status == "queued" and job.attempt == 0 and not job.cancel_requested
        assert job.created_at.tzinfo is not None
        assert jobs.job_spec(job) == spec
        assert job.spec_hash == spec.spec_hash()
        assert [e.data for e in list_events(session, job_id)] == [{"status": "queued"}]


def test_idempotency(sessions: Sessions, tenant: Tenant, make_spec: SpecFactory) -> None:
    spec = make_spec()
    with sessions.begin() as session:
        first = jobs.create_job(session, tenant.id, spec, idempotency_key="k1")
    with sessions.begin() as session:
        again = jobs.create_job(session, tenant.id, make_spec(), idempotency_key="k1")
    assert first.created and not again.created
    assert again.job.id == first.job.id
    with sessions.begin() as session, pytest.raises(IdempotencyConflictError) as info:
        jobs.create_job(session, tenant.id, make_spec(seed=1), idempotency_key="k1")
    assert info.value.job_id == first.job.id
    # Without a key, the same body makes a new job.
    assert _create(sessions, tenant, spec) != first.job.id


def test_idempotency_keys_are_per_tenant(
    sessions: Sessions, tenant: Tenant, other_tenant: Tenant, spec: JobSpec
) -> None:
    a = _create(sessions, tenant, spec, idempotency_key="same")
    b = _create(sessions, other_tenant, spec, idempotency_key="same")
    assert a != b


def test_concurrency_cap(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    ids = [_create(sessions, tenant, spec, max_active=2) for _ in range(2)]
    with sessions.begin() as session, pytest.raises(TooManyActiveJobsError) as info:
        jobs.create_job(session, tenant.id, spec, max_active=2)
    assert (info.value.active, info.value.limit) == (2, 2)
    with sessions.begin() as session:
        assert jobs.count_active_jobs(session, tenant.id) == 2
        assert jobs.finish_job(session, ids[0], "cancelled")
    _create(sessions, tenant, spec, max_active=2)


def test_tenant_isolation(
    sessions: Sessions, tenant: Tenant, other_tenant: Tenant, spec: JobSpec
) -> None:
    mine = _create(sessions, tenant, spec)
    theirs = _create(sessions, other_tenant, spec)
    with sessions.begin() as session:
        assert jobs.get_job(session, other_tenant.id, mine) is None
        assert jobs.request_cancel(session, other_tenant.id, mine) is None
        assert [j.id for j in jobs.list_jobs(session, tenant.id).jobs] == [mine]
        assert [j.id for j in jobs.list_jobs(session, other_tenant.id).jobs] == [theirs]
        assert jobs.get_job(session, tenant.id, mine) is not None


def test_claim_is_compare_and_set(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _create(sessions, tenant, spec)
    with sessions.begin() as session:
        first = jobs.claim_job(session, job_id, "w1")
    with sessions.begin() as session:
        second = jobs.claim_job(session, job_id, "w2")
    assert first.claimed and first.reason == "claimed"
    assert first.job is not None and first.job.attempt == 1 and first.job.worker == "w1"
    assert first.job.started_at is not None and first.job.status == "running"
    assert not second.claimed and second.reason == "not_queued"
    assert second.job is not None and second.job.attempt == 1 and second.job.worker == "w1"
    with sessions.begin() as session:
        assert jobs.claim_job(session, "job_" + "0" * 26, "w1").reason == "not_found"


def test_concurrent_claims_have_one_winner(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    job_id = _create(sessions, tenant, spec)
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []

    def claim(name: str) -> None:
        barrier.wait()
        with sessions.begin() as session:
            outcomes.append(jobs.claim_job(session, job_id, name).claimed)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, False, False, True]
    with sessions.begin() as session:
        job = jobs.load_job(session, job_id)
        assert job is not None and job.attempt == 1


def test_a_released_job_is_queued_again_for_the_next_claim(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    job_id = _create(sessions, tenant, spec)
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1")
    with sessions.begin() as session:  # a stale attempt number changes nothing
        assert not jobs.release_job(session, job_id, attempt=2, reason="worker_stopping")
    with sessions.begin() as session:
        assert jobs.release_job(session, job_id, attempt=1, reason="worker_stopping")
    with sessions.begin() as session:
        job = jobs.load_job(session, job_id)
        assert job is not None and (job.status, job.worker, job.heartbeat_at) == (
            "queued",
            None,
            None,
        )
        assert not jobs.release_job(session, job_id, attempt=1, reason="worker_stopping")
    with sessions.begin() as session:
        again = jobs.claim_job(session, job_id, "w2")
    assert again.claimed and again.job is not None
    assert (again.job.attempt, again.job.worker) == (2, "w2")


def test_heartbeat_resume_and_fencing(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _create(sessions, tenant, spec)
    with sessions.begin() as session:
        jobs.claim_job(session, job_id, "w1")
    progress = Progress(round=1, rounds_total=3, step=50, steps_total=300, fraction=0.4)
    with sessions.begin() as session:
        beat = jobs.heartbeat(session, job_id, attempt=1, progress=progress)
    assert beat.owned and not beat.cancel_requested
    with sessions.begin() as session:
        fresh = jobs.resume_claim(session, job_id, "w2", stale_after=timedelta(minutes=5))
    assert not fresh.claimed and fresh.reason == "heartbeat_fresh"

    later = utcnow() + timedelta(minutes=10)
    with sessions.begin() as session:
        stale = jobs.stale_running_jobs(session, timedelta(minutes=5), now=later)
        assert [j.id for j in stale] == [job_id]
        assert jobs.stale_running_jobs(session, timedelta(minutes=5)) == []
        resumed = jobs.resume_claim(
            session, job_id, "w2", stale_after=timedelta(minutes=5), now=later
        )
    assert resumed.claimed and resumed.job is not None
    assert resumed.job.attempt == 2 and resumed.job.worker == "w2"
    assert resumed.job.progress == progress.model_dump(mode="json")
    with sessions.begin() as session:
        # The old worker is fenced off: its heartbeat and its finish no longer count.
        assert not jobs.heartbeat(session, job_id, attempt=1).owned
        assert not jobs.finish_job(session, job_id, "succeeded", attempt=1, result=RESULT)
        assert jobs.finish_job(session, job_id, "succeeded", attempt=2, result=RESULT)
        job = jobs.load_job(session, job_id)
        assert job is not None and job.status == "succeeded" and job.finished_at is not None
        assert job.result == RESULT.model_dump()
        assert not jobs.finish_job(session, job_id, "failed", error=JobError(code="x", message="y"))


def test_resume_honours_cancel_and_attempt_limit(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    later = utcnow() + timedelta(hours=1)
    cancelled_id, exhausted_id = _create(sessions, tenant, spec), _create(sessions, tenant, spec)
    with sessions.begin() as session:
        jobs.claim_job(session, cancelled_id, "w1")
        jobs.claim_job(session, exhausted_id, "w1")
        assert jobs.request_cancel(session, tenant.id, cancelled_id).outcome == "requested"  # type: ignore[union-attr]
    with sessions.begin() as session:
        a = jobs.resume_claim(session, cancelled_id, "w2", stale_after=timedelta(0), now=later)
        b = jobs.resume_claim(
            session, exhausted_id, "w2", stale_after=timedelta(0), max_attempts=1, now=later
        )
    assert (a.claimed, a.reason, a.job and a.job.status) == (False, "cancelled", "cancelled")
    assert (b.claimed, b.reason, b.job and b.job.status) == (False, "exhausted", "failed")
    assert b.job is not None and b.job.error_code == "too_many_attempts"


def test_cancel(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    queued, running = _create(sessions, tenant, spec), _create(sessions, tenant, spec)
    with sessions.begin() as session:
        jobs.claim_job(session, running, "w1")
    with sessions.begin() as session:
        a = jobs.request_cancel(session, tenant.id, queued)
        b = jobs.request_cancel(session, tenant.id, running)
    assert a is not None and (a.outcome, a.job.status) == ("cancelled", "cancelled")
    assert b is not None and (b.outcome, b.job.status, b.job.cancel_requested) == (
        "requested",
        "running",
        True,
    )
    with sessions.begin() as session:
        assert jobs.claim_job(session, queued, "w1").reason == "not_queued"
        assert jobs.heartbeat(session, running, attempt=1).cancel_requested
        assert jobs.finish_job(session, running, "cancelled", attempt=1)
        again = jobs.request_cancel(session, tenant.id, running)
    assert again is not None and again.outcome == "terminal"


def test_finish_validates(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _create(sessions, tenant, spec)
    with sessions.begin() as session:
        with pytest.raises(ValueError, match="final status"):
            jobs.finish_job(session, job_id, "running")
        with pytest.raises(ValueError, match="result"):
            jobs.finish_job(session, job_id, "succeeded")
        with pytest.raises(ValueError, match="error"):
            jobs.finish_job(session, job_id, "failed")
        error = JobError(code="out_of_memory", message="CUDA ran out of memory")
        assert jobs.finish_job(session, job_id, "failed", error=error)
        job = jobs.load_job(session, job_id)
        assert job is not None and (job.error_code, job.status) == ("out_of_memory", "failed")
        events = list_events(session, job_id)
        assert events[-1].data == {"status": "failed", "code": "out_of_memory"}


def test_pagination_has_no_duplicates_or_gaps(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    base = utcnow()
    created = []
    for i in range(23):
        # Groups of three share a timestamp, so the id tie-break is exercised.
        now = base - timedelta(seconds=i // 3)
        with sessions.begin() as session:
            created.append(jobs.create_job(session, tenant.id, spec, now=now).job)
    expected = [j.id for j in sorted(created, key=lambda j: (j.created_at, j.id), reverse=True)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        with sessions.begin() as session:
            page = jobs.list_jobs(session, tenant.id, after=cursor, limit=5)
            if pages == 1:  # a job created mid-walk is newer: it must not shift later pages
                jobs.create_job(session, tenant.id, spec)
        seen += [j.id for j in page.jobs]
        pages += 1
        if not page.has_more:
            assert page.next_cursor is None
            break
        cursor = page.next_cursor
    assert seen == expected
    assert pages == 5


def test_filters_and_bad_cursor(sessions: Sessions, tenant: Tenant, make_spec: SpecFactory) -> None:
    a = _create(sessions, tenant, make_spec(labels={"team": "vision", "exp": "1"}))
    b = _create(sessions, tenant, make_spec(labels={"team": "vision", "exp": "2"}))
    c = _create(sessions, tenant, make_spec(labels={"team": "nlp"}))
    with sessions.begin() as session:
        jobs.claim_job(session, b, "w1")

        def ids(**kwargs: object) -> set[str]:
            return {j.id for j in jobs.list_jobs(session, tenant.id, **kwargs).jobs}  # type: ignore[arg-type]

        assert ids(labels={"team": "vision"}) == {a, b}
        assert ids(labels={"team": "vision", "exp": "2"}) == {b}
        assert ids(labels={"team": "missing"}) == set()
        assert ids(statuses=["queued"]) == {a, c}
        assert ids(statuses=["running"], labels={"team": "vision"}) == {b}
        for bad in ("not-a-cursor", "e30", "WyJ4IiwxXQ"):
            with pytest.raises(InvalidCursorError):
                jobs.list_jobs(session, tenant.id, after=bad)


def test_stale_queued_jobs(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _create(sessions, tenant, spec)
    with sessions.begin() as session:
        later = utcnow() + timedelta(minutes=2)
        assert [j.id for j in jobs.stale_queued_jobs(session, timedelta(minutes=1), now=later)] == [
            job_id
        ]
        assert jobs.stale_queued_jobs(session, timedelta(minutes=1)) == []


def test_counts_by_status(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    ids = [_create(sessions, tenant, spec) for _ in range(3)]
    with sessions.begin() as session:
        jobs.claim_job(session, ids[0], "w")
        assert jobs.count_jobs_by_status(session) == {"queued": 2, "running": 1}


def _race(count: int, action: Callable[[], object]) -> list[object]:
    """Run ``action`` in ``count`` threads released at once; results or raised exceptions."""
    barrier = threading.Barrier(count)
    results: list[object] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(action())
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_idempotent_creates_make_one_job(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    def create() -> object:
        with sessions.begin() as session:
            return jobs.create_job(session, tenant.id, spec, idempotency_key="race")

    results = _race(4, create)
    assert all(isinstance(r, jobs.CreateResult) for r in results), results
    created = [r for r in results if isinstance(r, jobs.CreateResult)]
    assert sum(r.created for r in created) == 1
    assert len({r.job.id for r in created}) == 1


def test_concurrent_creates_respect_the_cap(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    def create() -> object:
        with sessions.begin() as session:
            return jobs.create_job(session, tenant.id, spec, max_active=2)

    results = _race(5, create)
    assert sum(isinstance(r, jobs.CreateResult) for r in results) == 2
    assert sum(isinstance(r, TooManyActiveJobsError) for r in results) == 3
    with sessions.begin() as session:
        assert jobs.count_active_jobs(session, tenant.id) == 2
