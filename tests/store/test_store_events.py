"""Event log ordering and paging, and API keys, on both backends."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store import events, jobs, tenants
from store.tables import Tenant

Sessions = sessionmaker[Session]


def test_events_are_ordered_and_paged(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> None:
    with sessions.begin() as session:
        job_id = jobs.create_job(session, tenant.id, spec).job.id
        other_id = jobs.create_job(session, tenant.id, spec).job.id
    for i in range(12):
        with sessions.begin() as session:
            events.add_event(session, job_id, "progress", {"i": i})
            events.add_event(session, other_id, "message", {"i": i})
    with sessions.begin() as session:
        first = events.list_events(session, job_id, limit=5)
        rest = events.list_events(session, job_id, after_id=first[-1].id, limit=100)
    everything = first + rest
    assert [e.type for e in everything] == ["state"] + ["progress"] * 12
    assert [e.data.get("i") for e in everything[1:]] == list(range(12))
    ids = [e.id for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == 13
    assert all(e.job_id == job_id for e in everything)


def test_api_keys(sessions: Sessions) -> None:
    with sessions.begin() as session:
        key = tenants.create_api_key(session, "acme")
        other = tenants.create_api_key(session, "acme")
    assert key.startswith("lth_") and key != other
    with sessions.begin() as session:
        tenant = tenants.tenant_for_api_key(session, key)
        assert tenant is not None and tenant.name == "acme"
        assert tenants.tenant_for_api_key(session, key + "x") is None
        stored = tenants.list_api_keys(session, tenant.id)
        assert [k.prefix for k in stored] == [key[:12], other[:12]]
        assert key not in {k.key_hash for k in stored}  # only hashes are kept
        assert tenants.revoke_api_key(session, key)
        assert not tenants.revoke_api_key(session, key)
    with sessions.begin() as session:
        assert tenants.tenant_for_api_key(session, key) is None
        assert tenants.tenant_for_api_key(session, other) is not None
        assert tenants.ensure_tenant(session, "acme").id == tenant.id


def test_an_attempt_that_lost_its_job_writes_no_event(
    sessions: Sessions, tenant: Tenant, spec: JobSpec
) -> None:
    from datetime import timedelta

    with sessions.begin() as session:
        job_id = jobs.create_job(session, tenant.id, spec).job.id
        first = jobs.claim_job(session, job_id, "w1").job
        assert first is not None
        assert events.add_event(session, job_id, "progress", {"by": 1}, attempt=first.attempt)
    with sessions.begin() as session:
        later = jobs.resume_claim(session, job_id, "w2", stale_after=timedelta(0)).job
        assert later is not None and later.attempt == first.attempt + 1
    with sessions.begin() as session:  # the first worker, thawed, reports once more
        assert events.add_event(session, job_id, "progress", {"by": 1}, attempt=1) is None
        assert events.add_event(session, job_id, "progress", {"by": 2}, attempt=2) is not None
    with sessions.begin() as session:
        logged = [e.data for e in events.list_events(session, job_id) if e.type == "progress"]
    assert logged == [{"by": 1}, {"by": 2}]
