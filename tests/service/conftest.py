"""A real uvicorn server on a free 127.0.0.1 port, driven over HTTP with httpx.

The server runs in a thread so tests can hand it a recording ``enqueue`` and act as the worker
through the store (same database, separate engine).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.examples import minimal_spec
from service.app import create_app
from service.settings import Settings
from store.db import make_engine, make_sessionmaker
from store.tenants import create_api_key

MINIMAL_SPEC: dict[str, Any] = minimal_spec()


@dataclass
class LiveService:
    """A running server plus what a test needs to play client and worker."""

    url: str
    app: FastAPI
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    enqueued: list[str] = field(default_factory=list)
    stop: Callable[[], None] = lambda: None

    def new_key(self) -> str:
        """An API key for a brand-new tenant (tests stay independent on a shared server)."""
        with self.sessions.begin() as session:
            return create_api_key(session, f"tenant-{uuid.uuid4().hex[:10]}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def tenant_client(self) -> httpx.Client:
        return self.client(self.new_key())


def _serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


ServiceFactory = Callable[..., LiveService]


@pytest.fixture(scope="module")
def service_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceFactory]:
    """Start servers with settings overrides; all are stopped when the module ends."""
    running: list[Callable[[], None]] = []

    def start(
        database_url: str | None = None,
        enqueue: Callable[[str, str], None] | None = None,
        **overrides: Any,
    ) -> LiveService:
        home = tmp_path_factory.mktemp("lth-home")
        data_root = home / "data"
        data_root.mkdir()
        options: dict[str, Any] = {
            "home": home,
            "database_url": database_url or f"sqlite:///{home / 'lth.db'}",
            "data_roots": [Path("/usr/share/datasets"), data_root, home / "datasets"],
            "max_concurrent_jobs_per_tenant": 3,
            "max_upload_bytes": 256 * 1024,
            "sse_poll_seconds": 0.05,
            "broker_url": None,
        }
        options.update(overrides)
        settings = Settings(**options)
        enqueued: list[str] = []
        app = create_app(settings, enqueue=enqueue or (lambda job_id, _: enqueued.append(job_id)))
        server, thread, url = _serve(app)
        engine = make_engine(settings.database_url)

        def stop() -> None:
            server.should_exit = True
            thread.join(10)
            engine.dispose()

        running.append(stop)
        return LiveService(url, app, settings, engine, make_sessionmaker(engine), enqueued, stop)

    yield start
    for stop in running:
        stop()


@pytest.fixture(scope="module")
def live(service_factory: ServiceFactory) -> LiveService:
    """The module's shared server on a SQLite file."""
    return service_factory()


@pytest.fixture
def spec() -> dict[str, Any]:
    """A fresh copy of the minimal spec."""
    import copy

    return copy.deepcopy(MINIMAL_SPEC)


ProblemCheck = Callable[..., dict[str, Any]]


@pytest.fixture
def expect_problem() -> ProblemCheck:
    """Assert a response is an RFC 9457 problem with ``status``; return its body."""

    def check(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body: dict[str, Any] = response.json()
        assert body["status"] == status
        assert body["title"] and body["type"]
        assert body["instance"] == response.request.url.path
        return body

    return check
