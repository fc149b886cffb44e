"""Redis restarted with its data lost while jobs are queued and running: no job is lost. The
messages are gone with Redis; the reconciler sends again every job the database says is queued
or running without a live heartbeat, and the worker reconnects."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


class PrivateRedis:
    """A redis-server of the test's own (the shared one must keep its data), keeping nothing on
    disk, so a restart loses every message."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("the private redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def test_no_job_is_lost_when_redis_restarts_empty(
    tmp_path: Path, postgres_url: str, private_redis: PrivateRedis
) -> None:
    port = free_port()
    env = base_env(tmp_path, port) | {
        "LTH_DATABASE_URL": postgres_url,
        "LTH_BROKER_URL": private_redis.url,
        "LTH_AUTH": "enabled",
        "LTH_REQUEUE_QUEUED_AFTER_S": "3",
        "LTH_WORKER_CONCURRENCY": "1",
    }
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("api", LTH, "serve", "--no-worker")
    deployment.start_worker()
    try:
        deployment.wait_ready()
        spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "600it"}}
        spec["training"]["checkpoint_every"] = "100it"
        with deployment.client(deployment.key("tenant-a")) as client:
            jobs = [client.post("/v1/jobs", json=spec).json()["id"] for _ in range(3)]
            wait_for(client, jobs[0], {"running"})  # one running, two queued behind it
            private_redis.kill()  # every message lost
            time.sleep(1)
            private_redis.start()
            for job_id in jobs:
                done = wait_for(client, job_id, TERMINAL, timeout=300)
                assert done["status"] == "succeeded", (done, deployment.log_tail())
    finally:
        deployment.stop_all()
