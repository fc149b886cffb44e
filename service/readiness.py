"""Readiness probes for /readyz. Each is a callable that raises with a short reason when the
dependency is not usable; the worker package adds its own (e.g. "a live worker exists")."""

from __future__ import annotations

import socket
from datetime import timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.state import ReadinessCheck
from store.workers import live_workers

#: Brokers reached over the network, with their default ports.
NETWORK_BROKERS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


def database_check(engine: Engine) -> ReadinessCheck:
    """The job store answers ``SELECT 1``."""

    def check() -> None:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    return check


def broker_check(url: str | None, timeout: float = 1.0) -> ReadinessCheck:
    """A network broker accepts TCP connections (embedded brokers have nothing to reach)."""

    def check() -> None:
        if url is None:
            return
        parts = urlsplit(url)
        default_port = NETWORK_BROKERS.get(parts.scheme)
        if default_port is None:
            return
        host, port = parts.hostname or "localhost", parts.port or default_port
        try:
            with socket.create_connection((host, port), timeout):
                pass
        except OSError as exc:
            raise RuntimeError(
                f"broker {host}:{port} is unreachable ({exc.strerror or exc})"
            ) from exc

    return check


def worker_check(sessions: sessionmaker[Session], within: timedelta) -> ReadinessCheck:
    """At least one worker has reported in within ``within`` (else jobs would only queue)."""

    def check() -> None:
        with sessions() as session:
            if not live_workers(session, within):
                raise RuntimeError(f"no worker has reported in the last {within.seconds} s")

    return check
