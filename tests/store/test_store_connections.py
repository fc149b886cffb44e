"""Pooled PostgreSQL connections: reads without a transaction, and dead connections replaced
before use (always, or for the API after an idle spell) or after the one request they fail."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from store.db import make_engine, make_read_sessionmaker, make_sessionmaker


def _backend_pid(session: sa.orm.Session) -> int:
    pid: int = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    return pid


def _terminate(url: str, pid: int) -> None:
    """What a database restart does to a connection: its server process ends."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        engine.dispose()


def test_a_read_session_leaves_no_transaction_open(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with make_read_sessionmaker(engine)() as session:
            assert session.execute(sa.text("SELECT 1")).scalar_one() == 1
            dbapi = session.connection().connection.dbapi_connection
            assert dbapi is not None
            # Nothing to roll back, so the close that hands the connection back does no I/O.
            assert dbapi.info.transaction_status == TransactionStatus.IDLE
        with make_sessionmaker(engine)() as session:
            session.execute(sa.text("SELECT 1"))
            dbapi = session.connection().connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.info.transaction_status == TransactionStatus.INTRANS
    finally:
        engine.dispose()


@pytest.mark.parametrize("ping_idle_after_s", [None, 0.0], ids=["every-checkout", "when-idle"])
def test_a_connection_that_died_while_idle_is_replaced_before_use(
    postgres_url: str, ping_idle_after_s: float | None
) -> None:
    engine = make_engine(postgres_url, pool_size=1, ping_idle_after_s=ping_idle_after_s)
    sessions = make_read_sessionmaker(engine)
    try:
        with sessions() as session:
            first = _backend_pid(session)
        _terminate(postgres_url, first)
        with sessions() as session:
            assert _backend_pid(session) != first  # no error: the ping found it dead
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged_and_its_death_costs_one_error(
    postgres_url: str,
) -> None:
    engine = make_engine(postgres_url, pool_size=1, ping_idle_after_s=3600.0)
    sessions = make_read_sessionmaker(engine)
    try:
        with sessions() as session:
            first = _backend_pid(session)
        _terminate(postgres_url, first)
        with sessions() as session, pytest.raises(sa.exc.OperationalError):
            _backend_pid(session)  # the API answers this one 503
        with sessions() as session:
            assert _backend_pid(session) != first  # the pool was discarded and refilled
    finally:
        engine.dispose()


def test_a_session_left_idle_inside_a_transaction_is_ended_and_its_locks_freed(
    postgres_url: str,
) -> None:
    """A worker frozen mid-transaction must not block the worker that takes its job over."""
    frozen = make_engine(postgres_url, pool_size=1, idle_in_transaction_timeout_s=0.5)
    other = make_engine(postgres_url, pool_size=1)
    key = 0x4C54485F54  # an advisory lock stands for the job row the frozen worker locked
    lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
    try:
        with make_sessionmaker(frozen)() as stuck:
            stuck.execute(lock, {"key": key})  # then nothing: the process is stopped
            with make_sessionmaker(other)() as taker:
                taker.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
                taker.execute(lock, {"key": key})  # granted once the server ends `stuck`
                taker.commit()
            with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction timeout"):
                stuck.execute(sa.text("SELECT 1"))  # thawed, it learns its session is gone
    finally:
        frozen.dispose()
        other.dispose()


def test_the_idle_transaction_timeout_keeps_the_urls_own_options(postgres_url: str) -> None:
    url = sa.engine.make_url(postgres_url)
    with_path = url.update_query_dict({"options": "-csearch_path=lth_elsewhere,public"})
    engine = make_engine(with_path, idle_in_transaction_timeout_s=1.5)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW search_path")).scalar_one() == "lth_elsewhere,public"
            timeout = conn.execute(sa.text("SHOW idle_in_transaction_session_timeout"))
            assert timeout.scalar_one() == "1500ms"
    finally:
        engine.dispose()
