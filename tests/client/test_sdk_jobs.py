"""The SDK against a real ``lth serve``: jobs, pagination, waiting, rounds, events (JSON and SSE,
with a dropped stream resumed), idempotency, errors that must not be retried, and 429s."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from lth_client_support import LONG_TRAINING, CuttingProxy, Server, small_spec

from api_schemas.jobs import Job
from api_schemas.spec import JobSpec
from client.sdk import (
    AsyncClient,
    Client,
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)

pytestmark = pytest.mark.e2e


def test_create_wait_rounds_and_events(server: Server, unique_label: dict[str, str]) -> None:
    seen: list[Job] = []
    with server.client() as client:
        spec = JobSpec.model_validate(small_spec(labels=unique_label, name="sdk flow"))
        job = client.create_job(spec)
        assert job.status in ("queued", "running") and job.labels == unique_label
        done = client.wait(job.id, on_progress=seen.append, poll_interval=0.1, timeout=120)
        assert done.status == "succeeded" and done.result is not None
        assert client.get_job(job.id) == done

        assert seen[0].id == job.id and seen[-1] == done
        assert len(seen) >= 2, "the callback fires on every change, not once"
        assert all(a != b for a, b in itertools.pairwise(seen))
        statuses = [j.status for j in seen]
        assert statuses == sorted(statuses, key=["queued", "running", "succeeded"].index)

        rounds = client.rounds(job.id)
        assert [r.round for r in rounds] == [0, 1]
        assert rounds[1].density < rounds[0].density == 1.0
        assert done.result.ticket_round in (0, 1)

        page = client.events(job.id)
        assert page.data[0].data == {"status": "queued"}
        assert page.data[-1].type == "state" and page.data[-1].data["status"] == "succeeded"
        assert {e.type for e in page.data} >= {"state", "progress", "round"}
        later = client.events(job.id, after=page.data[2].id)
        assert later.data == page.data[3:]

        streamed = list(client.stream_events(job.id))
        assert streamed == page.data
        assert list(client.stream_events(job.id, last_event_id=page.data[-2].id)) == [page.data[-1]]


def test_list_jobs_follows_cursors(server: Server, unique_label: dict[str, str]) -> None:
    with server.client() as client:
        ids = []
        for _ in range(3):
            ids.append(client.create_job(small_spec(labels=unique_label)).id)
            client.cancel_job(ids[-1])
        newest_first = ids[::-1]
        assert [j.id for j in client.list_jobs(label=unique_label, page_size=1)] == newest_first
        assert [j.id for j in client.list_jobs(label=unique_label, limit=2, page_size=1)] == (
            newest_first[:2]
        )
        page = client.list_jobs_page(label=unique_label, limit=2)
        assert page.has_more and [j.id for j in page.data] == newest_first[:2]
        rest = client.list_jobs_page(label=unique_label, limit=2, after=page.next_cursor)
        assert [j.id for j in rest.data] == newest_first[2:] and not rest.has_more
        assert list(client.list_jobs(label=unique_label, status="succeeded")) == []
        cancelled = client.list_jobs(label=unique_label, status=["cancelled", "running"])
        assert {j.status for j in cancelled} <= {"cancelled", "running"}


def test_idempotency_key_returns_the_first_job(
    server: Server, unique_label: dict[str, str]
) -> None:
    spec = small_spec(labels=unique_label)
    with server.client() as client:
        first = client.create_job(spec, idempotency_key=f"key-{unique_label['test']}")
        again = client.create_job(spec, idempotency_key=f"key-{unique_label['test']}")
        assert again.id == first.id
        with pytest.raises(Conflict):
            client.create_job(spec | {"seed": 5}, idempotency_key=f"key-{unique_label['test']}")
        other = client.create_job(spec)  # no key given: a fresh one, hence a new job
        assert other.id != first.id
        for job_id in (first.id, other.id):
            client.cancel_job(job_id)
        with pytest.raises(Conflict) as finished:
            client.cancel_job(first.id)
        assert finished.value.status == 409 and finished.value.type.endswith("job-finished")


def test_404_and_422_are_not_retried(server: Server) -> None:
    sent: list[httpx.Request] = []
    with server.client(retries=5, event_hooks={"request": [sent.append]}) as client:
        with pytest.raises(NotFound) as missing:
            client.get_job("job_doesnotexist")
        assert missing.value.detail == "No job with this id." and len(sent) == 1

        invalid = small_spec(training={"steps": "10it", "eval_every": "20it"})
        with pytest.raises(ValidationFailed) as rejected:
            client.create_job(invalid)
        assert len(sent) == 2
        assert [e.loc for e in rejected.value.errors] == ["training.eval_every"]
        assert rejected.value.status == 422 and rejected.value.title


def test_dropped_event_stream_resumes_with_last_event_id(
    server: Server, finished_job: str, cutting_proxy: Callable[[int], CuttingProxy]
) -> None:
    with server.client() as client:
        expected = client.events(finished_job).data
    proxy = cutting_proxy(900)  # headers and a few events, then the connection drops
    with Client(proxy.url, backoff=0.05) as client:
        streamed = list(client.stream_events(finished_job))
    assert [e.id for e in streamed] == [e.id for e in expected], "each event exactly once"
    assert len(proxy.requests) >= 2
    first, second = proxy.requests[0].decode(), proxy.requests[1].decode().lower()
    assert "text/event-stream" in first
    resumed_after = streamed[0].id
    assert "last-event-id: " in second
    last_id = int(second.split("last-event-id: ")[1].split("\r\n")[0])
    assert resumed_after <= last_id < expected[-1].id


def test_async_client_reads_the_same_job(server: Server, finished_job: str) -> None:
    async def read() -> tuple[Any, ...]:
        async with AsyncClient(server.url) as client:
            job = await client.wait(finished_job, poll_interval=0.1)
            jobs = [j.id async for j in client.list_jobs(label={"fixture": "finished"})]
            streamed = [e async for e in client.stream_events(finished_job)]
            page = await client.events(finished_job, limit=1000)
            return job, jobs, streamed, page.data, await client.rounds(finished_job)

    job, jobs, streamed, events, rounds = asyncio.run(read())
    assert job.status == "succeeded" and jobs == [finished_job]
    assert streamed == events and len(rounds) == 2


def test_429_is_retried_until_a_slot_frees(auth_server: Server) -> None:
    key = auth_server.keys["alice"]
    with auth_server.client(key) as client:
        blocker = client.create_job(small_spec(training=LONG_TRAINING, labels={"role": "blocker"}))
        with (
            auth_server.client(key, retries=0) as impatient,
            pytest.raises(RateLimited) as limited,
        ):
            impatient.create_job(small_spec())
        assert limited.value.extensions.get("limit") == 1

        statuses: list[int] = []

        def free_a_slot(response: httpx.Response) -> None:
            statuses.append(response.status_code)
            if response.status_code == 429 and statuses.count(429) == 1:
                client.cancel_job(blocker.id)

        with auth_server.client(
            key, retries=10, backoff=0.2, event_hooks={"response": [free_a_slot]}
        ) as patient:
            created = patient.create_job(
                small_spec(training=LONG_TRAINING, labels={"role": "patient"})
            )
        assert statuses[0] == 429 and statuses[-1] == 202
        assert [j.id for j in client.list_jobs(label={"role": "patient"})] == [created.id]
        client.cancel_job(created.id)

    with auth_server.client("lth_not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.get_job(created.id)
    with auth_server.client(auth_server.keys["bob"]) as bob, pytest.raises(NotFound):
        bob.get_job(created.id)
