"""Deleting finished jobs (store.retention) on real SQLite and PostgreSQL, with the local store
and S3 (a real moto server): what the TTL expires, what it keeps, and the order of deletion."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import JobError
from api_schemas.spec import JobSpec
from store import jobs
from store.artifact_store import ArtifactStore, open_artifact_store
from store.retention import Retention, delete_job_rows, expired_jobs, purge_job
from store.reuse import find_training, record_training
from store.settings import Settings
from store.tables import EventRow, JobRow, ReusableTraining, Tenant, utcnow
from tests.conftest import settings_fields

Sessions = sessionmaker[Session]
DAY = timedelta(days=1)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    fields: dict[str, str] = {}
    if request.param == "s3":
        env: dict[str, str] = request.getfixturevalue("s3_env")
        fields = settings_fields(env)
    yield open_artifact_store(Settings(home=tmp_path / "home", **fields))


def _job(sessions: Sessions, tenant: Tenant, spec: JobSpec, *, age: timedelta, status: str) -> str:
    """A job created ``age`` ago and, unless queued, claimed then; finished then if asked."""
    then = utcnow() - age
    with sessions.begin() as session:
        job_id = jobs.create_job(session, tenant.id, spec, now=then).job.id
        if status != "queued":
            assert jobs.claim_job(session, job_id, "w1", now=then).claimed
        if status == "failed":
            error = JobError(code="test", message="test")
            assert jobs.finish_job(session, job_id, "failed", error=error, now=then)
        elif status == "cancelled":
            assert jobs.finish_job(session, job_id, "cancelled", now=then)
    return job_id


def _put(store: ArtifactStore, tmp_path: Path, job_id: str) -> None:
    source = tmp_path / "object"
    source.write_bytes(job_id.encode())
    for name in ("rounds.json", "rounds/0/trained.safetensors", ".ticket.safetensors.tmp"):
        store.put_file(f"{job_id}/{name}", source)


def _keys(store: ArtifactStore, job_id: str) -> list[str]:
    return [item.key for item in store.list(f"{job_id}/")]


def _exists(sessions: Sessions, job_id: str) -> bool:
    with sessions() as session:
        return session.get(JobRow, job_id) is not None


def _count(sessions: Sessions, table: type[EventRow] | type[ReusableTraining], job_id: str) -> int:
    with sessions() as session:
        query = sa.select(sa.func.count()).select_from(table).where(table.job_id == job_id)
        return int(session.scalar(query) or 0)


def test_only_finished_jobs_past_the_ttl_expire(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, store: ArtifactStore, tmp_path: Path
) -> None:
    old_failed = _job(sessions, tenant, spec, age=10 * DAY, status="failed")
    old_cancelled = _job(sessions, tenant, spec, age=8 * DAY, status="cancelled")
    new_failed = _job(sessions, tenant, spec, age=DAY, status="failed")
    old_running = _job(sessions, tenant, spec, age=10 * DAY, status="running")
    old_queued = _job(sessions, tenant, spec, age=10 * DAY, status="queued")
    every = [old_failed, old_cancelled, new_failed, old_running, old_queued]
    for job_id in every:
        _put(store, tmp_path, job_id)
    with sessions.begin() as session:
        files = {"trained": f"{old_failed}/rounds/0/trained.safetensors"}
        assert record_training(session, tenant.id, "a" * 64, old_failed, files)
        files = {"trained": f"{new_failed}/rounds/0/trained.safetensors"}
        assert record_training(session, tenant.id, "b" * 64, new_failed, files)
    with sessions() as session:
        assert expired_jobs(session, 7 * DAY) == [old_failed, old_cancelled]

    purged: list[str] = []
    retention = Retention(sessions, store, ttl_days=7, on_purged=purged.append)
    assert retention.sweep() == [old_failed, old_cancelled] == purged

    for job_id in (old_failed, old_cancelled):
        assert not _exists(sessions, job_id) and _keys(store, job_id) == []
        assert store.stat(f"{job_id}/.ticket.safetensors.tmp") is None  # hidden ones too
        assert _count(sessions, EventRow, job_id) == 0
        assert _count(sessions, ReusableTraining, job_id) == 0
    for job_id in (new_failed, old_running, old_queued):
        assert _exists(sessions, job_id) and len(_keys(store, job_id)) == 2
        assert _count(sessions, EventRow, job_id) > 0
    with sessions() as session:
        kept = find_training(session, tenant.id, "b" * 64)
        assert kept is not None and kept.job_id == new_failed
        assert find_training(session, tenant.id, "a" * 64) is None
    assert retention.sweep() == []  # nothing left to expire
    assert Retention(sessions, store, ttl_days=None).sweep() == []  # no TTL: never


def test_a_failed_store_leaves_the_job_to_delete_again(
    sessions: Sessions,
    tenant: Tenant,
    spec: JobSpec,
    store: ArtifactStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reuse rows go first, the rows last: a store that fails in between strands nothing."""
    job_id = _job(sessions, tenant, spec, age=DAY, status="failed")
    _put(store, tmp_path, job_id)
    with sessions.begin() as session:
        files = {"trained": f"{job_id}/rounds/0/trained.safetensors"}
        assert record_training(session, tenant.id, "a" * 64, job_id, files)

    def away(prefix: str) -> int:
        raise OSError("the object store is away")

    monkeypatch.setattr(store, "delete_prefix", away)
    with pytest.raises(OSError):
        purge_job(sessions, store, job_id)
    assert Retention(sessions, store, ttl_days=0.5).sweep() == []  # logged, skipped
    assert _exists(sessions, job_id) and len(_keys(store, job_id)) == 2
    assert _count(sessions, ReusableTraining, job_id) == 0  # no one is handed its files now
    monkeypatch.undo()
    assert purge_job(sessions, store, job_id)
    assert not _exists(sessions, job_id) and _keys(store, job_id) == []


def test_active_or_missing_jobs_are_never_deleted(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, store: ArtifactStore, tmp_path: Path
) -> None:
    running = _job(sessions, tenant, spec, age=DAY, status="running")
    _put(store, tmp_path, running)
    assert not purge_job(sessions, store, running)
    assert not purge_job(sessions, store, "job_" + "0" * 26)
    with sessions.begin() as session:
        assert not delete_job_rows(session, running)
    assert _exists(sessions, running) and len(_keys(store, running)) == 2


def test_the_loop_sweeps_periodically(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, store: ArtifactStore, tmp_path: Path
) -> None:
    old = _job(sessions, tenant, spec, age=3 * DAY, status="failed")
    _put(store, tmp_path, old)
    retention = Retention(sessions, store, ttl_days=2, every_s=0.05)
    retention.start()
    try:
        deadline = time.monotonic() + 20
        while _exists(sessions, old):
            assert time.monotonic() < deadline, "the retention loop never deleted the job"
            time.sleep(0.05)
    finally:
        retention.stop()
    assert _keys(store, old) == []
