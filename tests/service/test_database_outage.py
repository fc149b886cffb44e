"""The job store away for a moment (PostgreSQL restarting, a network partition): the API
answers 503 problem+json with Retry-After, never 500, and recovers by itself once it is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.service.conftest import MINIMAL_SPEC, LiveService, ProblemCheck, ServiceFactory
from tests.service.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A TCP proxy to the test's PostgreSQL schema, and the database URL through it."""
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    finally:
        proxy.close()


def test_an_outage_answers_503_and_the_api_recovers_by_itself(
    service_factory: ServiceFactory,
    proxy: tuple[TcpProxy, str],
    expect_problem: ProblemCheck,
) -> None:
    tcp, database_url = proxy
    live: LiveService = service_factory(database_url=database_url)
    try:
        with live.client(live.new_key()) as client:
            assert client.get("/v1/jobs").status_code == 200
            tcp.cut()
            for response in (client.get("/v1/jobs"), client.post("/v1/jobs", json=MINIMAL_SPEC)):
                problem = expect_problem(response, 503)
                assert problem["type"].endswith("database-unavailable")
                assert response.headers["Retry-After"] == "5"
            tcp.restore()
            # Pooled connections died with the cut; the pre-ping replaces them, no restart.
            assert client.get("/v1/jobs").status_code == 200
            created = client.post("/v1/jobs", json=MINIMAL_SPEC)
            assert created.status_code == 202, created.text
    finally:
        live.stop()
