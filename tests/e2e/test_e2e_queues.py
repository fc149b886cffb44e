"""Jobs reach only workers that can run them: real Redis, PostgreSQL, API and Celery workers.

A worker taking only the CPU queue runs the ``device: cpu`` job, one taking only the shared
queue the ``auto`` job, and the ``cuda`` job waits, queued, for a GPU worker that never comes.
``lth serve``'s own worker takes every queue.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from store.db import make_engine, make_sessionmaker
from store.queue import ANY_QUEUE, CPU_QUEUE, GPU_QUEUE
from store.tables import JobRow
from tests.conftest import redis_db
from tests.e2e.deployments import (
    LTH,
    SMALL_SPEC,
    TERMINAL,
    Deployment,
    base_env,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e


def on(device: str) -> dict[str, Any]:
    """A second of training: where a job runs is the point, not what it finds."""
    training = {**SMALL_SPEC["training"], "steps": "40it", "eval_every": "20it", "device": device}
    pruning = {"rounds": 1, "rates": {"linear": 0.5}, "controls": []}
    return {**SMALL_SPEC, "training": training, "pruning": pruning}


def submit(client: httpx.Client, device: str) -> str:
    response = client.post("/v1/jobs", json=on(device))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.fixture
def redis_broker(redis_url: str) -> str:
    import redis

    broker = redis_db(redis_url, 4)
    redis.Redis.from_url(broker).flushdb()
    return broker


@pytest.fixture
def split_queues(tmp_path: Path, postgres_url: str, redis_broker: str) -> Iterator[Deployment]:
    """The API, a worker started with ``--queue cpu`` and one with ``--queue any``; the
    reconciler is slowed down so that the queues hold exactly what was submitted."""
    port = free_port()
    env = base_env(tmp_path, port) | {
        "LTH_DATABASE_URL": postgres_url,
        "LTH_BROKER_URL": redis_broker,
        "LTH_AUTH": "disabled",
        "LTH_REQUEUE_QUEUED_AFTER_S": "600",
    }
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("api", LTH, "serve", "--no-worker")
    for queue in ("cpu", "any"):
        name = f"{queue}-only"
        deployment.start(name, sys.executable, "-m", "worker", "--name", name, "--queue", queue)
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop_all()


def test_workers_take_only_the_jobs_of_their_queues(
    split_queues: Deployment, redis_broker: str
) -> None:
    import redis

    with split_queues.client() as client:
        jobs = {device: submit(client, device) for device in ("cuda", "auto", "cpu")}
        for device in ("cpu", "auto"):
            done = wait_for(client, jobs[device], TERMINAL)
            assert done["status"] == "succeeded", (done, split_queues.log_tail())
        time.sleep(1.0)  # two idle workers with free slots: neither takes the cuda job
        waiting = client.get(f"/v1/jobs/{jobs['cuda']}").json()
        assert waiting["status"] == "queued" and waiting["attempt"] == 0, waiting
        assert client.get("/readyz").status_code == 200  # a waiting cuda job is no outage
    engine = make_engine(split_queues.env["LTH_DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as session:
            ran_on = {device: session.get(JobRow, job_id).worker for device, job_id in jobs.items()}
    finally:
        engine.dispose()
    assert ran_on == {"cpu": "cpu-only", "auto": "any-only", "cuda": None}
    broker = redis.Redis.from_url(redis_broker)
    # The cuda job's message waits in the GPU queue for a GPU worker: not lost, not taken.
    assert (broker.llen(GPU_QUEUE), broker.llen(ANY_QUEUE), broker.llen(CPU_QUEUE)) == (1, 0, 0)


def test_lth_serves_own_worker_takes_every_queue(embedded: Deployment) -> None:
    """On one machine every job must run: the cuda job is taken (and fails here, if this host
    has no GPU, with the engine's clear message) rather than waiting forever."""
    with embedded.client() as client:
        jobs = {device: submit(client, device) for device in ("cpu", "cuda")}
        done = {device: wait_for(client, job_id, TERMINAL) for device, job_id in jobs.items()}
    assert done["cpu"]["status"] == "succeeded", (done, embedded.log_tail())
    cuda = done["cuda"]
    assert cuda["status"] == "succeeded" or "no CUDA device" in cuda["error"]["message"], cuda
