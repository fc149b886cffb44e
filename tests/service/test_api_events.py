"""Events over real HTTP: JSON pages and a live Server-Sent Events stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from api_schemas.jobs import JobResult, Progress
from store import events as event_store
from store import jobs as job_store

RESULT = JobResult(
    ticket_round=1,
    ticket_density=0.8,
    ticket_accuracy=0.9,
    dense_accuracy=0.9,
    rounds_completed=1,
    stop_reason="rounds",
)


def _read_sse(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse the stream until the server closes it."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                data = json.loads(fields["data"])
                assert str(data["id"]) == fields["id"] and data["type"] == fields["event"]
                events.append(data)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def _work(live: Any, job_id: str, delay: float = 0.0) -> None:
    """Play the worker: claim, report progress and a round, succeed."""
    time.sleep(delay)
    with live.sessions.begin() as session:
        job_store.claim_job(session, job_id, "w1")
    for step in (100, 200):
        progress = Progress(round=0, rounds_total=2, step=step, steps_total=300, fraction=0.3)
        with live.sessions.begin() as session:
            job_store.heartbeat(session, job_id, attempt=1, progress=progress)
            event_store.add_event(session, job_id, "progress", {"step": step})
        time.sleep(delay / 4)
    with live.sessions.begin() as session:
        event_store.add_event(session, job_id, "round", {"round": 0, "accuracy": 0.9})
        job_store.finish_job(session, job_id, "succeeded", attempt=1, result=RESULT)


EXPECTED = ["state", "state", "progress", "progress", "round", "state"]


def test_json_pages(live: Any, spec: dict[str, Any], expect_problem: Callable[..., Any]) -> None:
    with live.tenant_client() as client:
        job = client.post("/v1/jobs", json=spec).json()
        _work(live, job["id"])
        first = client.get(job["urls"]["events"], params={"limit": 4}).json()
        assert first["has_more"] is True and len(first["data"]) == 4
        rest = client.get(
            job["urls"]["events"], params={"after": first["next_cursor"], "limit": 100}
        ).json()
        assert rest["has_more"] is False
        events = first["data"] + rest["data"]
        assert [e["type"] for e in events] == EXPECTED
        assert events[0]["data"] == {"status": "queued"}
        assert events[-1]["data"] == {"status": "succeeded"}
        assert all(e["job_id"] == job["id"] for e in events)
        empty = client.get(job["urls"]["events"], params={"after": events[-1]["id"]}).json()
        assert empty == {"data": [], "next_cursor": None, "has_more": False}
        expect_problem(client.get(job["urls"]["events"], params={"after": -1}), 422)
        expect_problem(client.get(job["urls"]["events"], params={"after": 2**63}), 422)


def test_sse_follows_a_running_job_to_the_end(live: Any, spec: dict[str, Any]) -> None:
    with live.tenant_client() as client:
        job = client.post("/v1/jobs", json=spec).json()
        worker = threading.Thread(target=_work, args=(live, job["id"], 0.3))
        worker.start()
        started = time.monotonic()
        with client.stream(
            "GET", job["urls"]["events"], headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _read_sse(response)
        worker.join()
        assert [e["type"] for e in events] == EXPECTED
        assert events[-1]["data"]["status"] == "succeeded"
        assert time.monotonic() - started < 10

        # Reconnecting with Last-Event-ID resumes after it; a final job closes at once.
        with client.stream(
            "GET",
            job["urls"]["events"],
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(events[3]["id"])},
        ) as response:
            resumed = _read_sse(response)
        assert [e["id"] for e in resumed] == [e["id"] for e in events[4:]]

        # A malformed Last-Event-ID is ignored (the stream starts at `after`), never a 500.
        for bad in (b"\xb2", b"9" * 40, b"-3"):  # b"\xb2" is "²", which str.isdigit() accepts
            with client.stream(
                "GET",
                job["urls"]["events"],
                headers={"Accept": "text/event-stream", "Last-Event-ID": bad},
            ) as response:
                assert response.status_code == 200
                assert [e["id"] for e in _read_sse(response)] == [e["id"] for e in events]


def test_sse_for_another_tenant_is_404(live: Any, spec: dict[str, Any]) -> None:
    with live.tenant_client() as owner, live.tenant_client() as stranger:
        job = owner.post("/v1/jobs", json=spec).json()
        response = stranger.get(job["urls"]["events"], headers={"Accept": "text/event-stream"})
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
