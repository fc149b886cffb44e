"""Reusable trainings on real SQLite and PostgreSQL: first writer wins, tenants stay apart."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store import jobs, reuse
from store.tables import Tenant

Sessions = sessionmaker[Session]

KEY = "a" * 64
OTHER_KEY = "b" * 64


def _job(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> str:
    with sessions.begin() as session:
        return jobs.create_job(session, tenant.id, spec).job.id


def _record(sessions: Sessions, tenant: Tenant, key: str, job_id: str) -> bool:
    with sessions.begin() as session:
        return reuse.record_training(
            session, tenant.id, key, job_id, {"trained": f"{job_id}/rounds/0/trained.safetensors"}
        )


def _holder(sessions: Sessions, tenant: Tenant, key: str) -> str | None:
    with sessions.begin() as session:
        row = reuse.find_training(session, tenant.id, key)
        return None if row is None else row.job_id


def test_record_and_find(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_id = _job(sessions, tenant, spec)
    files = {"trained": f"{job_id}/a.safetensors", "metrics": f"{job_id}/m.json"}
    with sessions.begin() as session:
        assert reuse.find_training(session, tenant.id, KEY) is None
        assert reuse.record_training(session, tenant.id, KEY, job_id, files)
    with sessions.begin() as session:
        row = reuse.find_training(session, tenant.id, KEY)
        assert row is not None
        assert (row.job_id, row.files) == (job_id, files)
        assert row.created_at.tzinfo is not None
        assert reuse.find_training(session, tenant.id, OTHER_KEY) is None


def test_first_writer_wins(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    first, second = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    assert _record(sessions, tenant, KEY, first)
    assert not _record(sessions, tenant, KEY, second)
    assert not _record(sessions, tenant, KEY, first)
    with sessions.begin() as session:  # twice in one transaction: still no IntegrityError
        assert reuse.record_training(session, tenant.id, OTHER_KEY, second, {})
        assert not reuse.record_training(session, tenant.id, OTHER_KEY, first, {})
    assert _holder(sessions, tenant, KEY) == first
    assert _holder(sessions, tenant, OTHER_KEY) == second


def test_concurrent_records_store_one(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    job_ids = [_job(sessions, tenant, spec) for _ in range(4)]
    start = threading.Barrier(len(job_ids))
    outcomes: dict[str, bool | BaseException] = {}

    def record(job_id: str) -> None:
        start.wait()
        try:
            outcomes[job_id] = _record(sessions, tenant, KEY, job_id)
        except BaseException as exc:
            outcomes[job_id] = exc

    threads = [threading.Thread(target=record, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(outcome, bool) for outcome in outcomes.values()), outcomes
    winners = [job_id for job_id, stored in outcomes.items() if stored is True]
    assert len(outcomes) == len(job_ids) and len(winners) == 1
    assert _holder(sessions, tenant, KEY) == winners[0]


def test_tenants_never_share_keys(
    sessions: Sessions, tenant: Tenant, other_tenant: Tenant, spec: JobSpec
) -> None:
    mine, theirs = _job(sessions, tenant, spec), _job(sessions, other_tenant, spec)
    assert _record(sessions, tenant, KEY, mine)
    assert _holder(sessions, other_tenant, KEY) is None
    assert _record(sessions, other_tenant, KEY, theirs)
    assert _holder(sessions, tenant, KEY) == mine
    assert _holder(sessions, other_tenant, KEY) == theirs
    # A row under one tenant can never point at another tenant's job.
    assert not _record(sessions, tenant, OTHER_KEY, theirs)
    assert _holder(sessions, tenant, OTHER_KEY) is None
    assert not _record(sessions, tenant, OTHER_KEY, "job_missing")
    with sessions.begin() as session:  # forgetting is scoped to the tenant too
        assert not reuse.forget_training(session, other_tenant.id, KEY, mine)
    assert _holder(sessions, tenant, KEY) == mine


def test_forget_training_only_by_holder(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    first, second = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    assert _record(sessions, tenant, KEY, first)
    with sessions.begin() as session:
        assert not reuse.forget_training(session, tenant.id, KEY, second)
    assert _holder(sessions, tenant, KEY) == first
    with sessions.begin() as session:
        assert reuse.forget_training(session, tenant.id, KEY, first)
        assert not reuse.forget_training(session, tenant.id, KEY, first)
    assert _holder(sessions, tenant, KEY) is None
    assert _record(sessions, tenant, KEY, second)
    assert _holder(sessions, tenant, KEY) == second


def test_forget_job(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    first, second = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    third_key = "c" * 64
    assert _record(sessions, tenant, KEY, first)
    assert _record(sessions, tenant, OTHER_KEY, first)
    assert _record(sessions, tenant, third_key, second)
    with sessions.begin() as session:
        assert reuse.forget_job(session, first) == 2
        assert reuse.forget_job(session, first) == 0
    assert _holder(sessions, tenant, KEY) is None
    assert _holder(sessions, tenant, OTHER_KEY) is None
    assert _holder(sessions, tenant, third_key) == second
