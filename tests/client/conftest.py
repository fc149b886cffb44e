"""Fixtures of the client tests: real ``lth serve`` processes (uvicorn plus a Celery worker on
SQLite and the embedded broker) on free ports, shared per session, and helpers built on them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lth_client_support import CuttingProxy, Server, mint_key, serving, small_spec


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared service without authentication (one local tenant)."""
    with serving(tmp_path_factory.mktemp("lth-open"), LTH_AUTH="disabled") as live:
        yield live


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service with API keys and at most one active job per tenant (to provoke 429)."""
    home = tmp_path_factory.mktemp("lth-auth")
    keys = {tenant: mint_key(home, tenant) for tenant in ("alice", "bob")}
    with serving(home, LTH_AUTH="enabled", LTH_MAX_CONCURRENT_JOBS_PER_TENANT="1") as live:
        live.keys = keys
        yield live


@pytest.fixture(scope="session")
def finished_job(server: Server) -> str:
    """Id of one small job that succeeded (read-only tests share it)."""
    with server.client() as client:
        job = client.create_job(small_spec(labels={"fixture": "finished"}))
        job = client.wait(job.id, poll_interval=0.1, timeout=120)
    assert job.status == "succeeded", job.error
    return job.id


@pytest.fixture
def unique_label() -> dict[str, str]:
    """A label no other test uses, to find exactly this test's jobs."""
    return {"test": uuid.uuid4().hex[:12]}


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec to a JSON (or YAML, by suffix) file and return its path."""

    def write(spec: dict[str, Any], name: str = "spec.json") -> Path:
        path = tmp_path / name
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(spec))
        else:
            path.write_text(json.dumps(spec))
        return path

    return write


@pytest.fixture
def cutting_proxy(server: Server) -> Iterator[Callable[[int], CuttingProxy]]:
    """Make proxies to the shared server; all are closed after the test."""
    made: list[CuttingProxy] = []

    def make(cut_after: int) -> CuttingProxy:
        made.append(CuttingProxy(server.url, cut_after))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
