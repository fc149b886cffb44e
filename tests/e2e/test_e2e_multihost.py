"""Workers on two "hosts": separate homes, nothing shared but PostgreSQL, Redis and S3.

The S3-compatible server is moto's (a real HTTP server). One worker is killed with SIGKILL in
the middle of a round; its job is resumed by the other worker from the checkpoint it finds in
the object store, and ends with the same weights, bit for bit, as the same spec run without
interruption. Every artifact then downloads through the API with its listed sha256, streamed
and through a presigned URL.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.sdk import Client
from store.artifact_store import open_artifact_store
from store.settings import Settings
from tests.conftest import redis_db, settings_fields
from tests.e2e.deployments import (
    LTH,
    SMALL_SPEC,
    TERMINAL,
    Deployment,
    base_env,
    free_port,
    wait_for,
    wait_for_progress,
)

pytestmark = pytest.mark.e2e

LONG = {
    **SMALL_SPEC,
    "training": {**SMALL_SPEC["training"], "steps": "1500it", "checkpoint_every": "250it"},
}


@pytest.fixture
def hosts(
    tmp_path: Path, postgres_url: str, redis_url: str, s3_env: dict[str, str]
) -> Iterator[tuple[Deployment, str]]:
    """The API twice (streaming, and answering downloads with presigned URLs; its URL is the
    second item) and two workers, each with a home of its own."""
    import redis

    broker = redis_db(redis_url, 2)
    redis.Redis.from_url(broker).flushdb()
    port = free_port()
    env = (
        base_env(tmp_path / "api", port)
        | s3_env
        | {
            "LTH_DATABASE_URL": postgres_url,
            "LTH_BROKER_URL": broker,
            "LTH_AUTH": "enabled",
            "LTH_TORCH_THREADS": "1",  # same arithmetic on every host: bit-identical results
            "LTH_ARTIFACT_SYNC_SECONDS": "0.5",
        }
    )
    deployment = Deployment(url=f"http://127.0.0.1:{port}", env=env, home=tmp_path)
    deployment.start("api", LTH, "serve", "--no-worker", env={"LTH_HOME": str(tmp_path / "api")})
    try:
        for host in ("a", "b"):
            deployment.start(
                f"worker-{host}",
                sys.executable,
                "-m",
                "worker",
                "--name",
                f"host-{host}",
                "--concurrency",
                "1",
                env={"LTH_HOME": str(tmp_path / f"host-{host}")},
            )
        deployment.wait_ready()  # the API has migrated the database and both workers report
        presigned_port = free_port()
        deployment.start(
            "api-presigned",
            LTH,
            "serve",
            "--no-worker",
            env={
                "LTH_HOME": str(tmp_path / "api-presigned"),
                "LTH_PORT": str(presigned_port),
                "LTH_ARTIFACT_REDIRECT": "presigned",
            },
        )
        presigned_url = f"http://127.0.0.1:{presigned_port}"
        Deployment(presigned_url, deployment.env, tmp_path).wait_ready()
        yield deployment, presigned_url
    finally:
        deployment.stop_all()


def _submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get(
        f"/v1/jobs/{job_id}/events", params={"limit": 1000}
    ).json()["data"]
    return data


def _workers(client: httpx.Client, job_id: str) -> list[str]:
    """The workers that claimed the job, attempt by attempt."""
    return [
        e["data"]["worker"]
        for e in _events(client, job_id)
        if e["type"] == "state" and e["data"].get("status") == "running"
    ]


def _artifacts(client: httpx.Client, job_id: str) -> dict[str, dict[str, Any]]:
    listed = client.get(f"/v1/jobs/{job_id}/artifacts")
    assert listed.status_code == 200, listed.text
    return {item["name"]: item for item in listed.json()["data"]}


def _wait_for_stored_checkpoint(
    env: dict[str, str], job_id: str, *, round: int, timeout: float = 60
) -> None:
    store = open_artifact_store(Settings(**settings_fields(env)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [item.key for item in store.list(f"{job_id}/rounds/{round}/")]
        if any(n.endswith("/checkpoint.safetensors") or "/stack-" in n for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of round {round} of {job_id} reached the store")


def _untimed(value: Any) -> Any:
    """Results without their wall-clock times, the one thing a resumed run changes."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "time" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_a_job_killed_on_one_host_resumes_on_the_other_from_the_store(
    hosts: tuple[Deployment, str],
) -> None:
    deployment, presigned_url = hosts
    with (
        deployment.client(key_a := deployment.key("tenant-a")) as client_a,
        deployment.client(deployment.key("tenant-b")) as client_b,
    ):
        # Same spec for two tenants: no training is shared between tenants, so the twin is
        # trained for itself, uninterrupted, as the reference.
        victim = _submit(client_a, LONG)
        twin = _submit(client_b, LONG)
        others = [
            _submit(client_a, {**SMALL_SPEC, "seed": 7}),
            _submit(client_b, {**SMALL_SPEC, "seed": 8}),
        ]
        wait_for(client_a, victim, {"running"}, timeout=90)
        wait_for_progress(client_a, victim, round=1, step=0)
        # Killed once the store holds a round-1 checkpoint: the other host can only resume
        # from what reached the store.
        _wait_for_stored_checkpoint(deployment.env, victim, round=1)
        (first_host,) = _workers(client_a, victim)
        deployment.kill(f"worker-{first_host.removeprefix('host-')}")

        jobs = {victim: client_a, twin: client_b, others[0]: client_a, others[1]: client_b}
        for job_id, client in jobs.items():
            done = wait_for(client, job_id, TERMINAL, timeout=400)
            assert done["status"] == "succeeded", (done, deployment.log_tail())

        survivor = "host-b" if first_host == "host-a" else "host-a"
        assert _workers(client_a, victim) == [first_host, survivor]
        ran_on = {host for job_id, client in jobs.items() for host in _workers(client, job_id)}
        assert ran_on == {"host-a", "host-b"}  # the four jobs were spread over both

        # The survivor went on with round 1 from a checkpoint it could only find in the store.
        events = _events(client_a, victim)
        resumed = next(e["id"] for e in events if e["data"].get("resumed"))
        after = [e for e in events if e["id"] > resumed and e["type"] == "progress"]
        assert after[0]["data"]["round"] == 1 and after[0]["data"]["step"] >= 250, after[0]
        assert [e["data"]["round"] for e in events if e["type"] == "round"] == [0, 1, 2]

        # ... and ended where the uninterrupted twin did, bit for bit.
        mine, reference = _artifacts(client_a, victim), _artifacts(client_b, twin)
        weights = sorted(n for n in reference if n.startswith("rounds/") and "safetensors" in n)
        assert weights and set(weights) <= set(mine)
        assert {n: mine[n]["sha256"] for n in weights} == {
            n: reference[n]["sha256"] for n in weights
        }
        rounds = client_a.get(f"/v1/jobs/{victim}/rounds").json()
        assert rounds and _untimed(rounds) == _untimed(
            client_b.get(f"/v1/jobs/{twin}/rounds").json()
        )

        # Every artifact of every job downloads with its listed hash: streamed by the API...
        for job_id, client in jobs.items():
            for name, item in _artifacts(client, job_id).items():
                answer = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
                assert answer.status_code == 200, (name, answer.text)
                assert hashlib.sha256(answer.content).hexdigest() == item["sha256"], name
        # ... and from the object store itself through presigned URLs.
        headers = {"Authorization": f"Bearer {key_a}"}
        base = presigned_url
        with httpx.Client(base_url=base, headers=headers, timeout=30) as presigning:
            for name, item in _artifacts(client_a, victim).items():
                answer = presigning.get(f"/v1/jobs/{victim}/artifacts/{name}")
                assert answer.status_code == 307, (name, answer.text)
                location = answer.headers["location"]
                assert location.startswith(deployment.env["LTH_S3_ENDPOINT_URL"])
                fetched = httpx.get(location)  # no API key: the URL itself grants access
                assert fetched.status_code == 200, (name, fetched.text)
                assert hashlib.sha256(fetched.content).hexdigest() == item["sha256"], name

        # The SDK follows the redirects (leaving its API key behind) and checks every file.
        with Client(presigned_url, key_a) as sdk:
            paths = sdk.download_all(victim, deployment.home / "downloads")
        listed = _artifacts(client_a, victim)
        assert len(paths) == len(listed)
        for path in paths:
            name = path.relative_to(deployment.home / "downloads").as_posix()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[name]["sha256"]

        # Nothing of a finished run stays in a worker's scratch folder.
        survivor_scratch = deployment.home / f"host-{survivor.removeprefix('host-')}" / "scratch"
        assert not any(path.is_file() for path in survivor_scratch.rglob("*"))
