"""Fixtures starting whole deployments (see ``deployments``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import redis_db
from tests.e2e.deployments import LTH, WEBHOOK_SECRET, Deployment, base_env, free_port


@pytest.fixture
def production(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Deployment]:
    """PostgreSQL + Redis, the API and one worker as separate processes, auth on."""
    import redis

    broker = redis_db(redis_url, 1)
    redis.Redis.from_url(broker).flushdb()
    yield from _deployment(tmp_path, postgres_url, broker)


@pytest.fixture
def production_amqp(tmp_path: Path, postgres_url: str, rabbitmq_url: str) -> Iterator[Deployment]:
    """The production shape on RabbitMQ instead of Redis. A message some earlier run left in
    the shared queue names a job this deployment's database does not have: its worker drops it."""
    yield from _deployment(tmp_path, postgres_url, rabbitmq_url)


def _deployment(
    tmp_path: Path, postgres_url: str, broker: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[Deployment]:
    port = free_port()
    env = (
        base_env(tmp_path, port)
        | {
            "LTH_DATABASE_URL": postgres_url,
            "LTH_BROKER_URL": broker,
            "LTH_AUTH": "enabled",
            "LTH_WEBHOOK_ALLOWLIST": "127.0.0.1",
            "LTH_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        | dict(extra_env or {})
    )
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("api", LTH, "serve", "--no-worker")
    deployment.start_worker()
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Deployment]:
    """``lth serve`` on its own: SQLite, the filesystem broker and a supervised worker."""
    port = free_port()
    env = base_env(tmp_path, port) | {"LTH_AUTH": "disabled"}
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("serve", LTH, "serve")
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop_all()
