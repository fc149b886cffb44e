"""Queues by device: which queue a job goes to, which ones a worker takes, and who sends where.

Real parts only: the Celery producer on the embedded (filesystem) broker, the reconciler and
``lth worker-health`` on a real SQLite store, ``lth worker``'s option parsing through click.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec, TrainingSpec
from store import jobs
from store.db import make_engine, make_sessionmaker, migrate
from store.queue import (
    ANY_QUEUE,
    CPU_QUEUE,
    GPU_QUEUE,
    QUEUES,
    CeleryEnqueue,
    make_celery,
    queue_for,
    worker_queues,
)
from store.reconcile import Reconciler
from store.settings import Settings
from store.tables import utcnow
from store.tenants import ensure_tenant
from store.workers import worker_seen
from worker.cli import health, worker

LTH = str(Path(sys.executable).parent / "lth")


def spec(device: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "lenet_300_100"},
            "dataset": {"uri": "idx:///usr/share/datasets/fashion-mnist"},
            "training": {"steps": "300it", "eval_every": "100it", "device": device},
            "pruning": {"rounds": 2},
        }
    )


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'lth.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def test_each_device_has_its_queue_and_every_device_of_the_spec_is_routed() -> None:
    assert queue_for("cuda") == GPU_QUEUE == "lth.gpu"
    assert queue_for("cpu") == CPU_QUEUE == "lth.cpu"
    assert queue_for("auto") == ANY_QUEUE == "lth.any"
    devices = get_args(TrainingSpec.model_fields["device"].annotation)
    assert {queue_for(device) for device in devices} == set(QUEUES.values())
    with pytest.raises(ValueError, match=r"unknown training\.device 'tpu'"):
        queue_for("tpu")


def test_workers_take_their_kind_and_the_shared_queue_unless_told_otherwise() -> None:
    assert worker_queues([], gpu=False) == [CPU_QUEUE, ANY_QUEUE]
    assert worker_queues([], gpu=True) == [GPU_QUEUE, ANY_QUEUE]
    assert worker_queues(["cpu"], gpu=True) == [CPU_QUEUE]
    assert worker_queues(["any", "gpu", "any"], gpu=False) == [ANY_QUEUE, GPU_QUEUE]
    with pytest.raises(ValueError, match=r"unknown queue 'lth\.cpu': choose from cpu, gpu, any"):
        worker_queues(["lth.cpu"], gpu=False)


def test_the_queue_setting_takes_the_names_the_cli_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = Settings.model_fields["worker_queues"].annotation
    assert set(get_args(get_args(annotation)[0])) == set(QUEUES)
    monkeypatch.setenv("LTH_WORKER_QUEUES", " cpu, any ,")
    assert Settings().worker_queues == ["cpu", "any"]
    monkeypatch.setenv("LTH_WORKER_QUEUES", "")
    assert Settings().worker_queues == []
    monkeypatch.setenv("LTH_WORKER_QUEUES", "cpu,tpu")
    with pytest.raises(ValidationError, match="worker_queues"):
        Settings()


def test_the_queue_option_parses_names_without_starting_a_worker() -> None:
    context = worker.make_context("worker", ["--queue", "gpu, any", "--gpu", "0"])
    assert context.params["queues"] == ["gpu", "any"]
    assert worker.make_context("worker", []).params["queues"] is None
    result = CliRunner().invoke(worker, ["--help"])
    assert result.exit_code == 0 and "--queue NAMES" in result.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cpu,gpux", "unknown queue 'gpux': choose from cpu, gpu, any"),
        (" , ", "name at least one queue of cpu, gpu, any"),
    ],
)
def test_an_unknown_queue_is_a_usage_error(value: str, message: str) -> None:
    result = CliRunner().invoke(worker, ["--queue", value])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Invalid value for '--queue'" in result.output


def test_lth_worker_rejects_a_bad_queue_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        [LTH, "worker"],
        env={**os.environ, "LTH_HOME": str(tmp_path), "LTH_WORKER_QUEUES": "cpu,tpu"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "worker_queues" in done.stderr and "Traceback" not in done.stderr


def test_the_producer_sends_each_job_to_its_devices_queue(tmp_path: Path) -> None:
    app = make_celery(None, tmp_path, 3600)  # the embedded broker: real files, no server
    enqueue = CeleryEnqueue(app)
    for job_id, device in [("job_gpu", "cuda"), ("job_cpu", "cpu"), ("job_any", "auto")]:
        enqueue(job_id, device)
    received: dict[str, list[Any]] = {}
    with app.connection_for_read() as connection:
        for queue in QUEUES.values():
            simple = connection.SimpleQueue(queue)
            message = simple.get(timeout=2)
            received[queue] = message.decode()[0]  # the task's args
            message.ack()
            with pytest.raises(simple.Empty):
                simple.get(timeout=0.2)
            simple.close()
    assert received == {GPU_QUEUE: ["job_gpu"], CPU_QUEUE: ["job_cpu"], ANY_QUEUE: ["job_any"]}


def test_the_reconciler_resends_each_job_to_its_devices_queue(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        tenant = ensure_tenant(session, "acme")
        old = utcnow() - timedelta(minutes=10)
        ids = {
            device: jobs.create_job(session, tenant.id, spec(device), now=old).job.id
            for device in ("cuda", "cpu", "auto")
        }
    with sessions.begin() as session:
        for job_id in ids.values():  # claimed by a worker that then died: heartbeats stale
            jobs.claim_job(session, job_id, "gone", now=old)
    sent: list[tuple[str, str]] = []
    reconciler = Reconciler(
        sessions,
        lambda job_id, device: sent.append((job_id, device)),
        stale_after_s=60,
        requeue_queued_after_s=60,
        every_s=3600,
    )
    reconciler.tick()
    assert sorted(sent) == sorted((job_id, device) for device, job_id in ids.items())


def test_worker_health_needs_a_recent_heartbeat_from_this_host(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = {"LTH_HOME": str(tmp_path), "LTH_DATABASE_URL": f"sqlite:///{tmp_path / 'lth.db'}"}
    runner = CliRunner()
    result = runner.invoke(health, [], env=env)
    assert result.exit_code == 1 and "no worker on" in result.output
    with sessions.begin() as session:  # a worker elsewhere says nothing about this container
        worker_seen(session, "elsewhere", hostname="another-host", pid=1, device="auto")
    assert runner.invoke(health, [], env=env).exit_code == 1
    with sessions.begin() as session:
        worker_seen(session, "here", hostname=socket.gethostname(), pid=2, device="auto")
    result = runner.invoke(health, [], env=env)
    assert result.exit_code == 0 and "alive: here" in result.output
    with sessions.begin() as session:  # silent for a minute: no longer healthy
        stale = utcnow() - timedelta(seconds=60)
        worker_seen(session, "here", hostname=socket.gethostname(), pid=2, device="auto", now=stale)
    assert runner.invoke(health, ["--within", "30"], env=env).exit_code == 1
