"""The reconciler against real SQLite and PostgreSQL: what it re-enqueues, and what it leaves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store import jobs
from store.reconcile import Reconciler
from store.tables import Tenant, utcnow
from store.workers import worker_seen, worker_stopped

Sessions = sessionmaker[Session]


def reconciler(sessions: Sessions, sent: list[str]) -> Reconciler:
    return Reconciler(
        sessions,
        lambda j, _: sent.append(j),
        stale_after_s=60,
        requeue_queued_after_s=60,
        every_s=3600,
    )


def job(sessions: Sessions, tenant: Tenant, spec: JobSpec, minutes_ago: int) -> str:
    with sessions.begin() as session:
        created = jobs.create_job(
            session, tenant.id, spec, now=utcnow() - timedelta(minutes=minutes_ago)
        )
        return created.job.id


def test_a_running_job_without_heartbeat_is_sent_again_once_per_period(
    sessions: Sessions, tenant: Tenant, make_spec: Callable[..., JobSpec]
) -> None:
    stale, fresh = job(sessions, tenant, make_spec(), 10), job(sessions, tenant, make_spec(), 10)
    with sessions.begin() as session:
        jobs.claim_job(session, stale, "w1", now=utcnow() - timedelta(minutes=5))
        jobs.claim_job(session, fresh, "w2")
    sent: list[str] = []
    rec = reconciler(sessions, sent)
    assert rec.tick() == [stale]
    assert rec.tick() == []  # not again within the period
    assert sent == [stale]


def test_queued_jobs_are_resent_only_to_idle_live_workers(
    sessions: Sessions, tenant: Tenant, make_spec: Callable[..., JobSpec]
) -> None:
    waiting = [job(sessions, tenant, make_spec(seed=i), 10 - i) for i in range(3)]
    sent: list[str] = []
    assert reconciler(sessions, sent).tick() == []  # no live worker: nobody could take them
    with sessions.begin() as session:
        worker_seen(session, "w1", hostname="h", pid=1, device="cpu")
        worker_seen(session, "w2", hostname="h", pid=2, device="cpu")
        jobs.claim_job(session, waiting[0], "w1")  # w1 is busy, w2 idle
    assert reconciler(sessions, sent).tick() == [waiting[1]]  # the oldest waiting job


def test_queued_jobs_are_resent_to_every_free_slot_of_the_live_workers(
    sessions: Sessions, tenant: Tenant, make_spec: Callable[..., JobSpec]
) -> None:
    waiting = [job(sessions, tenant, make_spec(seed=i), 20 - i) for i in range(6)]
    with sessions.begin() as session:
        worker_seen(session, "w1", hostname="h1", pid=1, device="cpu", concurrency=3)
        worker_seen(session, "w2", hostname="h2", pid=2, device="cpu", concurrency=2)
        # A worker that said it stopped, and one silent for too long: their slots are gone.
        worker_seen(session, "w3", hostname="h3", pid=3, device="cpu", concurrency=8)
        worker_stopped(session, "w3")
        old = utcnow() - timedelta(minutes=5)
        worker_seen(session, "w4", hostname="h4", pid=4, device="cpu", concurrency=8, now=old)
        jobs.claim_job(session, waiting[0], "w1")
        jobs.claim_job(session, waiting[1], "w2")
    sent: list[str] = []
    # 3 + 2 slots, 2 of them busy: the three oldest waiting jobs go, the fourth waits.
    assert reconciler(sessions, sent).tick() == waiting[2:5]
    with sessions.begin() as session:
        for job_id in waiting[2:5]:
            jobs.claim_job(session, job_id, "w1")
    assert reconciler(sessions, sent).tick() == []  # every slot busy (one even oversubscribed)


def test_recent_queued_jobs_are_left_alone(
    sessions: Sessions, tenant: Tenant, make_spec: Callable[..., JobSpec]
) -> None:
    job(sessions, tenant, make_spec(), 0)
    with sessions.begin() as session:
        worker_seen(session, "w1", hostname="h", pid=1, device="cpu")
    assert reconciler(sessions, []).tick() == []
