"""Worker rows against real SQLite and PostgreSQL: the slots they offer, as they come and go."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from store.tables import utcnow
from store.workers import live_slots, live_workers, worker_seen, worker_stopped

Sessions = sessionmaker[Session]
WITHIN = timedelta(seconds=30)


def test_live_slots_add_up_the_concurrency_of_live_workers_only(sessions: Sessions) -> None:
    now = utcnow()
    with sessions() as session:
        assert live_slots(session, WITHIN, now=now) == 0  # no worker at all
    with sessions.begin() as session:
        worker_seen(session, "cpu", hostname="h", pid=1, device="auto", concurrency=16, now=now)
        worker_seen(session, "gpu0", hostname="h", pid=2, device="cuda", now=now)
        worker_seen(session, "gone", hostname="h", pid=3, device="auto", concurrency=4, now=now)
        worker_stopped(session, "gone", now=now)
        stale = now - timedelta(minutes=2)
        worker_seen(session, "lost", hostname="h", pid=4, device="auto", concurrency=4, now=stale)
    with sessions() as session:
        assert live_slots(session, WITHIN, now=now) == 17  # a GPU worker has one slot
        assert [w.concurrency for w in live_workers(session, WITHIN, now=now)] == [16, 1]


def test_a_worker_seen_again_records_its_new_concurrency(sessions: Sessions) -> None:
    now = utcnow()
    with sessions.begin() as session:
        worker_seen(session, "w", hostname="h", pid=1, device="auto", concurrency=2, now=now)
    with sessions.begin() as session:  # same process, resized
        worker_seen(session, "w", hostname="h", pid=1, device="auto", concurrency=6, now=now)
    with sessions() as session:
        assert live_slots(session, WITHIN, now=now) == 6
    with sessions.begin() as session:  # restarted (new pid) with another size
        worker_seen(session, "w", hostname="h", pid=9, device="auto", concurrency=3, now=now)
    with sessions() as session:
        (row,) = live_workers(session, WITHIN, now=now)
        assert (row.pid, row.concurrency) == (9, 3)


def test_a_worker_without_slots_is_refused(sessions: Sessions) -> None:
    with sessions.begin() as session, pytest.raises(ValueError, match="at least one job"):
        worker_seen(session, "w", hostname="h", pid=1, device="auto", concurrency=0)
