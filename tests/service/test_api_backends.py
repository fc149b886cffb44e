"""The core job flow over real HTTP against both backends: SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from store import jobs as job_store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, service_factory: Any) -> Iterator[Any]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    live = service_factory(database_url=url)
    yield live
    live.stop()  # before the PostgreSQL schema is dropped


def test_job_lifecycle(backend: Any, spec: dict[str, Any]) -> None:
    with backend.tenant_client() as client, backend.tenant_client() as stranger:
        key = {"Idempotency-Key": "once"}
        first = client.post("/v1/jobs", json=spec, headers=key)
        assert first.status_code == 202
        job = first.json()
        assert client.post("/v1/jobs", json=spec, headers=key).json()["id"] == job["id"]
        assert client.post("/v1/jobs", json=spec | {"seed": 3}, headers=key).status_code == 409
        assert stranger.get(job["urls"]["self"]).status_code == 404
        assert backend.enqueued == [job["id"]]

        with backend.sessions.begin() as session:
            assert job_store.claim_job(session, job["id"], "w1").claimed
        with backend.sessions.begin() as session:
            assert not job_store.claim_job(session, job["id"], "w2").claimed
        running = client.get(job["urls"]["self"]).json()
        assert (running["status"], running["attempt"]) == ("running", 1)
        assert client.post(job["urls"]["cancel"]).json()["cancel_requested"] is True
        with backend.sessions.begin() as session:
            assert job_store.finish_job(session, job["id"], "cancelled", attempt=1)
        types = [e["data"].get("status") for e in client.get(job["urls"]["events"]).json()["data"]]
        assert types == ["queued", "running", None, "cancelled"]
        with client.stream(
            "GET", job["urls"]["events"], headers={"Accept": "text/event-stream"}
        ) as stream:
            frames = [line for line in stream.iter_lines() if line.startswith("event: ")]
        assert len(frames) == 4


def test_pagination_and_labels(backend: Any, spec: dict[str, Any]) -> None:
    with backend.tenant_client() as client:
        ids = []
        for i in range(7):
            body = copy.deepcopy(spec) | {"labels": {"parity": str(i % 2)}}
            ids.append(client.post("/v1/jobs", json=body).json()["id"])
            with backend.sessions.begin() as session:
                job_store.finish_job(session, ids[-1], "cancelled")
        seen: list[str] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 2, "label": "parity:1"}
            page = client.get("/v1/jobs", params=params | ({"after": after} if after else {}))
            seen += [j["id"] for j in page.json()["data"]]
            if not page.json()["has_more"]:
                break
            after = page.json()["next_cursor"]
        assert seen == [ids[5], ids[3], ids[1]]
