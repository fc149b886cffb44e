"""The Alembic revision creates exactly the ORM schema, and migrating twice is harmless."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from store.db import alembic_config, make_engine, migrate
from store.tables import Base


def test_revision_matches_orm_and_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(sa.inspect(connection).get_table_names())
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert version.scalar_one() == head == "0004"
    finally:
        engine.dispose()
    assert {"tenants", "api_keys", "jobs", "events", "datasets", "workers", "models"} <= tables


def test_sqlite_pragmas(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def test_concurrent_migrations(db_url: str) -> None:
    """Several processes starting at once must not race each other's DDL."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            migrate(db_url)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_workers_liveness(db_url: str) -> None:
    from datetime import timedelta

    from store.db import make_sessionmaker
    from store.tables import utcnow
    from store.workers import live_workers, worker_seen, worker_stopped

    migrate(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        now = utcnow()
        with sessions.begin() as session:
            worker_seen(session, "w1", hostname="h", pid=1, device="cpu", now=now)
            worker_seen(session, "w2", hostname="h", pid=2, device="cpu", now=now - timedelta(60))
        with sessions() as session:
            live = live_workers(session, timedelta(seconds=30), now=now)
            assert [w.name for w in live] == ["w1"]
        with sessions.begin() as session:
            worker_stopped(session, "w1", now=now)
        with sessions() as session:
            assert live_workers(session, timedelta(seconds=30), now=now) == []
        with sessions.begin() as session:  # a restarted process (new pid) registers afresh
            worker_seen(session, "w1", hostname="h", pid=3, device="cpu", now=now)
        with sessions() as session:
            (row,) = live_workers(session, timedelta(seconds=30), now=now)
            assert row.pid == 3 and row.stopped_at is None
    finally:
        engine.dispose()
