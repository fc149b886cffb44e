"""A worker that stops heartbeating (frozen, partitioned away, swapped out): its job is sent
again once the heartbeat is stale and another worker takes it over; the frozen one, thawed,
finds the job is no longer its own and writes nothing. A job whose workers were lost
``LTH_MAX_ATTEMPTS`` times fails with a message that says so."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import redis_db
from tests.e2e.conftest import _deployment
from tests.e2e.deployments import SMALL_SPEC, TERMINAL, Deployment, wait_for
from tests.e2e.test_e2e_service import children

pytestmark = pytest.mark.e2e


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str, redis_url: str
) -> Iterator[Deployment]:
    import redis

    broker = redis_db(redis_url, 3)
    redis.Redis.from_url(broker).flushdb()
    extra = {"LTH_MAX_ATTEMPTS": str(request.param), "LTH_WORKER_CONCURRENCY": "1"}
    yield from _deployment(tmp_path, postgres_url, broker, extra)


def _freeze_the_job(deployment: Deployment, client: httpx.Client, job_id: str) -> int:
    """SIGSTOP the process running ``job_id`` (the worker's one pool child); returns its pid."""
    wait_for(client, job_id, {"running"})
    while not (client.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("step"):
        time.sleep(0.1)
    (pool,) = children(deployment.processes["worker"].pid)
    os.kill(pool, signal.SIGSTOP)
    return pool


@pytest.mark.parametrize("deployment", [3], indirect=True)
def test_a_frozen_workers_job_is_taken_over_and_the_thawed_one_writes_nothing(
    deployment: Deployment,
) -> None:
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "600it"}}
    with deployment.client(deployment.key("tenant-a")) as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        frozen = _freeze_the_job(deployment, client, job_id)
        deployment.start_worker("worker2")
        done = wait_for(client, job_id, TERMINAL, timeout=240)
        assert done["status"] == "succeeded", (done, deployment.log_tail())
        assert done["attempt"] == 2
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        os.kill(frozen, signal.SIGCONT)  # thawed after the job ended elsewhere
        time.sleep(5)  # heartbeats and progress it would write, fenced by the attempt number
        after = client.get(f"/v1/jobs/{job_id}").json()
        assert (after["status"], after["attempt"], after["result"]) == (
            "succeeded",
            2,
            done["result"],
        )
        again = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        assert again == events


@pytest.mark.parametrize("deployment", [1], indirect=True)
def test_a_job_whose_workers_keep_getting_lost_fails_saying_why(deployment: Deployment) -> None:
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "600it"}}
    with deployment.client(deployment.key("tenant-a")) as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        frozen = _freeze_the_job(deployment, client, job_id)
        try:
            deployment.start_worker("worker2")
            done = wait_for(client, job_id, TERMINAL, timeout=120)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}\n{deployment.log_tail()}") from None
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert done["status"] == "failed", (done, deployment.log_tail())
        assert done["error"]["code"] == "too_many_attempts"
        assert "worker was lost" in done["error"]["message"]
