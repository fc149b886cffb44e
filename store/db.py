"""Engines, sessions and migrations for SQLite (a file) and PostgreSQL (psycopg 3).

SQLite transactions start with ``BEGIN IMMEDIATE``: a transaction that reads and then writes
(idempotency check, then insert) can otherwise fail with SQLITE_BUSY no busy timeout can fix.
That serialises writers and readers alike; PostgreSQL is the backend for real concurrency.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Key for ``pg_advisory_xact_lock``: concurrent starts must not migrate at the same time.
_MIGRATION_LOCK_KEY = 0x4C54485F4442  # "LTH_DB"
SQLITE_BUSY_TIMEOUT_S = 30.0
#: How long a pooled PostgreSQL connection of the API may sit unused and still be handed out
#: without a ping: one in steady use is not pinged (a round trip per request was a third of a
#: poll's database time); if it dies in use, its request answers 503 and SQLAlchemy discards
#: the whole pool for fresh connections. One that sat longer (a restart or a network cut may
#: have happened meanwhile) is pinged first and replaced if dead, so that no request sees it.
API_PING_IDLE_AFTER_S = 5.0


def normalise_url(url: str | URL) -> URL:
    """Plain ``postgresql://`` URLs mean psycopg 3, the driver this project installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(
    url: str | URL,
    *,
    pool_size: int | None = None,
    ping_idle_after_s: float | None = None,
    idle_in_transaction_timeout_s: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine; for SQLite a file database in WAL mode with foreign keys and a busy timeout.
    ``pool_size`` (PostgreSQL) is how many connections stay open: beyond it, each request
    that needs one would open and close a connection of its own. Every pooled PostgreSQL
    connection is pinged before use, or with ``ping_idle_after_s`` only one that sat unused
    that long (see :data:`API_PING_IDLE_AFTER_S`). With ``idle_in_transaction_timeout_s``
    PostgreSQL ends a session that sits that long inside a transaction (its process frozen,
    say), so that the row locks it holds do not block everyone else."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        if pool_size is not None:
            kwargs.setdefault("pool_size", pool_size)
        if idle_in_transaction_timeout_s is not None:
            milliseconds = max(1, round(idle_in_transaction_timeout_s * 1000))
            connect_args = kwargs.setdefault("connect_args", {})
            # Added to the URL's own options (a search_path, say), which these would replace.
            given = connect_args.get("options", parsed.query.get("options", ""))
            given = " ".join(given) if isinstance(given, tuple) else given
            option = f"-c idle_in_transaction_session_timeout={milliseconds}"
            connect_args["options"] = f"{given} {option}".strip()
        if ping_idle_after_s is None:
            kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, **kwargs)
        if ping_idle_after_s is not None:
            _ping_when_idle(engine, ping_idle_after_s)
        return engine

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    connect_args.setdefault("check_same_thread", False)
    engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (see SQLAlchemy's SQLite docs).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _ping_when_idle(engine: Engine, idle_after_s: float) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that sat in the pool ``idle_after_s``
    or longer only. A connection that fails the ping is replaced before anyone gets it."""

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")  # None: connected just now
        if idle_since is None or time.monotonic() - idle_since < idle_after_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DisconnectionError(f"a pooled connection is dead: {exc}") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (rows are handed to callers)."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads: on PostgreSQL each statement runs on its own
    (autocommit), which is what READ COMMITTED gives a transaction's statements anyway, without
    the round trips of BEGIN and ROLLBACK and without a transaction left open between them.
    SQLite keeps ordinary sessions (its transactions are begun by hand, see the module)."""
    if not reads_autocommit(engine):
        return make_sessionmaker(engine)
    return make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


def reads_autocommit(engine: Engine) -> bool:
    """Whether :func:`make_read_sessionmaker` gives ``engine`` autocommit sessions, which hand
    their connection back to the pool without a round trip (there is nothing to roll back)."""
    return engine.dialect.name == "postgresql"


def alembic_config() -> Config:
    """Alembic configured in code: no alembic.ini, scripts in ``store/migrations``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@contextmanager
def _sqlite_migration_lock(url: URL) -> Iterator[None]:
    """SQLite's counterpart of the advisory lock: an exclusive ``flock`` on a file beside the
    database. The first connections to a new file switch it to WAL, and a switch that meets
    another connection's DDL fails at once ("database is locked"), whatever the busy timeout."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database.startswith((":", "file:")):
        yield  # a server's database, or one in memory
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migrate(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision``; safe to call from concurrent processes."""
    with _sqlite_migration_lock(normalise_url(url)):
        _migrate(url, revision)


def _migrate(url: str | URL, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
    log.info("database at %s is at revision %s", normalise_url(url).render_as_string(), revision)
