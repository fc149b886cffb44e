"""Shared fixtures: real Redis, PostgreSQL and S3 (moto's server), an artifact directory, real data.

On a developer's laptop a missing server skips the tests that need it, with the reason. In CI
(``LTH_REQUIRE_SERVICES=1``, set by ``.ci/run``) a missing server fails them instead, so a green CI
run always means the real servers were exercised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REQUIRE_SERVICES = os.environ.get("LTH_REQUIRE_SERVICES", "") not in ("", "0", "false")
REDIS_URL = os.environ.get("LTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
#: Redis databases each test process may use (``redis_db``): pytest-xdist's workers take bands
#: counting down from REDIS_URL's database, so parallel tests never flush each other's queues.
REDIS_DBS_PER_WORKER = 5
RABBITMQ_URL = os.environ.get("LTH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "LTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FASHION_MNIST_DIR = Path(
    os.environ.get("LTH_TEST_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)


def require(condition: bool, reason: str) -> None:
    """Skip when ``condition`` fails, or fail outright when CI demands the real services."""
    if condition:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (LTH_REQUIRE_SERVICES is set, so this is an error)")
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests without a marker are unit tests, so ``-m unit`` and ``-m e2e`` split the suite."""
    for item in items:
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


def redis_db(url: str, slot: int) -> str:
    """``url`` with the ``slot``-th database of its test process's band (0: ``url`` itself)."""
    if not 0 <= slot < REDIS_DBS_PER_WORKER:
        raise ValueError(f"slot {slot} is outside 0..{REDIS_DBS_PER_WORKER - 1}")
    return _db_below(url, slot)


def _db_below(url: str, count: int) -> str:
    """``url`` with the database ``count`` below its own."""
    base, _, db = url.rpartition("/")
    index = int(db or 0) - count
    if index < 0:
        raise RuntimeError(f"Redis has no database {count} below {url}")
    return f"{base}/{index}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database for tests (db 15 by default, 10 for xdist's second worker, ...);
    flushed by the tests that use it. ``redis_db(redis_url, n)`` names the band's others."""
    require(_reachable(REDIS_URL, 6379), f"Redis is not reachable at {REDIS_URL}")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    url = _db_below(REDIS_URL, REDIS_DBS_PER_WORKER * worker)
    _db_below(url, REDIS_DBS_PER_WORKER - 1)  # the whole band must exist
    return url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """RabbitMQ, Celery's canonical broker (guest/guest on the default vhost)."""
    require(_reachable(RABBITMQ_URL, 5672), f"RabbitMQ is not reachable at {RABBITMQ_URL}")
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    require(_reachable(POSTGRES_URL, 5432), f"PostgreSQL is not reachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    try:
        yield f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's server mode) for the session."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _reachable(endpoint, port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            require(False, "moto's S3 server did not start (pip install 'moto[server]')")
        time.sleep(0.1)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def new_bucket_env(endpoint: str) -> dict[str, str]:
    """``LTH_*`` settings of a fresh, empty bucket on the S3 server at ``endpoint``, under a
    prefix."""
    import boto3

    bucket = f"lth-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    return {
        "LTH_ARTIFACT_URL": f"s3://{bucket}/runs",
        "LTH_S3_ENDPOINT_URL": endpoint,
        "LTH_S3_ACCESS_KEY_ID": "test",
        "LTH_S3_SECRET_ACCESS_KEY": "test",
        "LTH_S3_REGION": "us-east-1",
    }


def settings_fields(env: dict[str, str]) -> dict[str, str]:
    """``LTH_*`` variables as ``Settings`` keyword arguments."""
    return {key.removeprefix("LTH_").lower(): value for key, value in env.items()}


@pytest.fixture
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """``LTH_*`` settings of a fresh, empty bucket on the S3 server, under a prefix."""
    return new_bucket_env(s3_endpoint)


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    """An empty directory on real disk for a job's artifacts."""
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist`` package)."""
    present = all(
        (FASHION_MNIST_DIR / f"{name}.gz").exists()
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    )
    require(
        present,
        f"real Fashion-MNIST is not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
    )
    return FASHION_MNIST_DIR
