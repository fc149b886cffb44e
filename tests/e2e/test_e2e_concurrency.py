"""One worker, several jobs at once: a real Celery worker with two slots, and ``lth serve``'s."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from store.db import make_engine, make_sessionmaker
from store.workers import live_workers
from tests.conftest import redis_db
from tests.e2e.deployments import LTH, SMALL_SPEC, TERMINAL, Deployment, base_env, free_port
from tests.e2e.test_e2e_service import submit
from worker.cores import usable_cores

pytestmark = pytest.mark.e2e

WORKER = "two-slots"


@pytest.fixture
def two_slots(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Deployment]:
    """PostgreSQL + Redis, the API, and one worker started with ``--concurrency 2``."""
    import redis

    broker = redis_db(redis_url, 2)
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = base_env(tmp_path, port) | {
        "LTH_DATABASE_URL": postgres_url,
        "LTH_BROKER_URL": broker,
        "LTH_AUTH": "disabled",
    }
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("api", LTH, "serve", "--no-worker")
    deployment.start(
        "worker", sys.executable, "-m", "worker", "--name", WORKER, "--concurrency", "2"
    )
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop_all()


def recorded_slots(database_url: str) -> dict[str, int]:
    """What the live workers told the store about their slots."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            workers = live_workers(session, timedelta(seconds=30))
            return {w.name: w.concurrency for w in workers}
    finally:
        engine.dispose()


def test_a_worker_with_two_slots_runs_two_jobs_at_once(two_slots: Deployment) -> None:
    assert recorded_slots(two_slots.env["LTH_DATABASE_URL"]) == {WORKER: 2}
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "300it"}}
    with two_slots.client() as client:
        ids = [submit(client, {**spec, "seed": seed})["id"] for seed in (1, 2)]
        together = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            statuses = [job["status"] for job in jobs]
            together = together or statuses == ["running", "running"]
            if all(status in TERMINAL for status in statuses):
                break
            time.sleep(0.1)
        assert [job["status"] for job in jobs] == ["succeeded"] * 2, two_slots.log_tail()
        assert together, (jobs, two_slots.log_tail())
        assert [job["attempt"] for job in jobs] == [1, 1]
        first, second = (
            [datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at")] for job in jobs
        )
        assert first[0] < second[1] and second[0] < first[1]  # their runs overlapped


def test_lth_serve_gives_its_worker_a_slot_per_usable_core(embedded: Deployment) -> None:
    database = f"sqlite:///{embedded.home / 'lth.db'}"
    (slots,) = recorded_slots(database).values()
    assert slots == usable_cores()
