"""A job run by the worker against real artifact stores: what reaches the store, and when the
store is lost mid-run, a failure that says so with nothing half-published."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store.artifact_store import open_artifact_store
from store.db import make_engine, make_sessionmaker, migrate
from store.jobs import create_job, load_job
from store.settings import Settings
from store.tenants import ensure_tenant
from tests.conftest import settings_fields
from worker.job_runner import JobRunner

DATA = "synthetic://?classes=3&shape=1,6,6&train=300&test=90&noise=1.0"


def _spec(steps: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [24, 16]},
            "dataset": {"uri": DATA, "validation_size": 60},
            "training": {"batch_size": 20, "steps": steps, "eval_every": "20it", "lr": 0.005},
            "pruning": {"rounds": 2, "rates": {"linear": 0.5}},
            "seed": 3,
        }
    )


def _settings(tmp_path: Path, s3_env: dict[str, str]) -> Settings:
    fields = settings_fields(s3_env)
    return Settings(home=tmp_path / "home", torch_threads=1, artifact_sync_seconds=0.2, **fields)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = Settings(home=tmp_path / "db")
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def _job(sessions: sessionmaker[Session], spec: JobSpec) -> str:
    with sessions.begin() as session:
        tenant = ensure_tenant(session, "acme")
        job_id: str = create_job(session, tenant.id, spec).job.id
    return job_id


def _bucket(s3_env: dict[str, str]) -> Any:
    return boto3.resource(
        "s3",
        endpoint_url=s3_env["LTH_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).Bucket(s3_env["LTH_ARTIFACT_URL"].removeprefix("s3://").split("/")[0])


def test_a_finished_run_is_in_the_store_before_the_job_is(
    tmp_path: Path, s3_env: dict[str, str], database: tuple[Settings, sessionmaker[Session]]
) -> None:
    _, sessions = database
    settings = _settings(tmp_path, s3_env)
    job_id = _job(sessions, _spec("40it"))
    assert JobRunner(settings, sessions, "test-worker").run(job_id) == "succeeded"

    store = open_artifact_store(settings)
    stored = {item.key.removeprefix(f"{job_id}/"): item for item in store.list(f"{job_id}/")}
    manifest = json.loads(store.read_bytes(f"{job_id}/manifest.json") or b"{}")
    for entry in manifest["artifacts"]:
        data = store.read_bytes(f"{job_id}/{entry['name']}")
        assert data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert {"report.html", "report.png", "rounds.json", "rounds/2/mask.safetensors"} <= set(stored)
    assert not any("checkpoint" in name for name in stored)  # finished rounds keep none
    assert not (settings.scratch_root / job_id).exists()  # the scratch folder is freed


def test_losing_the_store_mid_run_fails_the_job_saying_so(
    tmp_path: Path, s3_env: dict[str, str], database: tuple[Settings, sessionmaker[Session]]
) -> None:
    _, sessions = database
    settings = _settings(tmp_path, s3_env)
    job_id = _job(sessions, _spec("600it"))
    outcome: list[str] = []
    runner = threading.Thread(
        target=lambda: outcome.append(JobRunner(settings, sessions, "w").run(job_id))
    )
    runner.start()
    bucket = _bucket(s3_env)
    deadline = time.monotonic() + 60
    while not list(bucket.objects.limit(1)):  # the first files are published
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    while True:  # the store goes away for good (the worker may publish in between)
        bucket.objects.all().delete()
        try:
            bucket.delete()
            break
        except bucket.meta.client.exceptions.ClientError:
            continue
    runner.join(timeout=120)
    assert outcome == ["failed"]
    with sessions() as session:
        job = load_job(session, job_id)
        assert job is not None and job.status == "failed"
        assert job.error_code == "artifact_store_unavailable"
        assert settings.artifact_store_url in (job.error_message or "")
    # Nothing of the run is kept half-published, and the worker kept it all on its disk.
    kept = {
        p.relative_to(settings.scratch_root).as_posix() for p in settings.scratch_root.rglob("*")
    }
    assert f"{job_id}/1/manifest.json" in kept and f"{job_id}/1/rounds/2/mask.safetensors" in kept
