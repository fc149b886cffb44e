"""DELETE /v1/jobs/{id} over real HTTP, on the local store and on S3: a finished job goes with
everything of it (objects, rows, reusable trainings, drawn reports); nothing else goes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from api_schemas.jobs import JobError
from store import jobs as job_store
from store.reuse import record_training
from store.tables import EventRow, JobRow, ReusableTraining
from tests.report.replicated import write_run
from tests.service.conftest import ServiceFactory
from tests.service.store_backends import KINDS, Backend, start_backend
from tests.service.test_api_models import tiny_onnx

ProblemCheck = Callable[..., dict[str, Any]]
KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module", params=KINDS)
def backend(request: pytest.FixtureRequest, service_factory: ServiceFactory) -> Backend:
    return start_backend(request, service_factory, request.param)


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((12, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(12, dtype=np.int64) % 3,
        x_test=rng.random((4, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(4, dtype=np.int64) % 3,
    )
    return buffer.getvalue()


def _submit(client: Any, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _fail(backend: Backend, job_id: str) -> None:
    with backend.live.sessions.begin() as session:
        error = JobError(code="test", message="finished for the test")
        assert job_store.finish_job(session, job_id, "failed", error=error)


def _run_files(backend: Backend, job_id: str, tmp_path: Path) -> None:
    """A published run, with a hidden leftover the listing never shows."""
    run = write_run(tmp_path / job_id)
    (run / "rounds" / "0").mkdir(parents=True)
    (run / "rounds" / "0" / "trained.safetensors").write_bytes(b"weights of " + job_id.encode())
    backend.publish(job_id, run)
    backend.put(f"{job_id}/.checkpoint.safetensors.tmp", b"partial")


def _rows(backend: Backend, table: Any, job_id: str) -> int:
    with backend.live.sessions() as session:
        count = session.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.job_id == job_id)
        )
        return int(count or 0)


def _reuse_rows(backend: Backend) -> set[tuple[str, str, str]]:
    with backend.live.sessions() as session:
        rows = session.execute(
            sa.select(ReusableTraining.tenant_id, ReusableTraining.key, ReusableTraining.job_id)
        )
        return {(t, k, j) for t, k, j in rows}


def _tenant_of(backend: Backend, job_id: str) -> str:
    with backend.live.sessions() as session:
        tenant = session.scalar(sa.select(JobRow.tenant_id).where(JobRow.id == job_id))
        assert tenant is not None
        return tenant


def _record(backend: Backend, key: str, job_id: str) -> None:
    tenant = _tenant_of(backend, job_id)
    files = {"trained": f"{job_id}/rounds/0/trained.safetensors"}
    with backend.live.sessions.begin() as session:
        assert record_training(session, tenant, key, job_id, files)


def _files_under(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob("*") if p.is_file())


def test_delete_a_finished_job_and_nothing_else(
    backend: Backend, spec: dict[str, Any], tmp_path: Path, expect_problem: ProblemCheck
) -> None:
    live = backend.live
    with live.tenant_client() as owner, live.tenant_client() as other:
        dataset = owner.post("/v1/datasets", files={"file": ("d.npz", _npz())}).json()
        model = owner.post("/v1/models", files={"file": ("m.onnx", tiny_onnx())}).json()
        doomed, kept = _submit(owner, spec), _submit(owner, spec)
        foreign = _submit(other, spec)
        for job_id in (doomed, kept, foreign):
            _run_files(backend, job_id, tmp_path)
            _fail(backend, job_id)
        _record(backend, KEY_A, doomed)
        _record(backend, KEY_B, kept)
        _record(backend, KEY_A, foreign)  # the same training key, another tenant's job
        assert owner.get(f"/v1/jobs/{doomed}/report").status_code == 200  # fills the cache
        cache = live.settings.home / "report-cache" / doomed
        assert cache.is_dir()

        everything = backend.raw_keys()
        assert f"{doomed}/.checkpoint.safetensors.tmp" in everything
        uploads = _files_under(live.settings.upload_root, live.settings.model_root)
        reuse = _reuse_rows(backend)
        assert _rows(backend, EventRow, doomed) > 0

        response = owner.delete(f"/v1/jobs/{doomed}")
        assert response.status_code == 204 and response.content == b""

        # Every object under the job's prefix is gone, hidden ones too; nothing else is.
        assert backend.raw_keys() == [k for k in everything if not k.startswith(f"{doomed}/")]
        assert backend.raw_keys(f"{doomed}/") == []
        assert backend.store.list(f"{doomed}/") == []
        if backend.kind == "local":
            assert not (live.settings.artifact_root / doomed).exists()
        assert not cache.exists()
        # Its rows are gone: the job, its events and its reusable training only.
        with live.sessions() as session:
            assert session.get(JobRow, doomed) is None
            assert session.get(JobRow, kept) is not None
            assert session.get(JobRow, foreign) is not None
        assert _rows(backend, EventRow, doomed) == 0
        assert _rows(backend, EventRow, kept) > 0 and _rows(backend, EventRow, foreign) > 0
        owner_id = _tenant_of(backend, kept)
        assert _reuse_rows(backend) == reuse - {(owner_id, KEY_A, doomed)}
        # Uploads are untouched.
        assert _files_under(live.settings.upload_root, live.settings.model_root) == uploads
        assert owner.get(f"/v1/datasets/{dataset['id']}").json() == dataset
        assert owner.get(f"/v1/models/uploads/{model['id']}").json() == model

        # The job is gone for its owner as for anyone.
        for url in ("", "/artifacts", "/artifacts/rounds.json", "/rounds", "/report", "/events"):
            expect_problem(owner.get(f"/v1/jobs/{doomed}{url}"), 404)
        expect_problem(owner.delete(f"/v1/jobs/{doomed}"), 404)
        assert [j["id"] for j in owner.get("/v1/jobs").json()["data"]] == [kept]
        # The other jobs still serve their files.
        kept_file = owner.get(f"/v1/jobs/{kept}/artifacts/rounds/0/trained.safetensors")
        assert kept_file.content == f"weights of {kept}".encode()


def test_active_jobs_are_refused(
    backend: Backend, spec: dict[str, Any], tmp_path: Path, expect_problem: ProblemCheck
) -> None:
    live = backend.live
    with live.tenant_client() as owner:
        queued, running = _submit(owner, spec), _submit(owner, spec)
        with live.sessions.begin() as session:
            assert job_store.claim_job(session, running, "worker-1").claimed
        _run_files(backend, running, tmp_path)
        before = backend.raw_keys(f"{running}/")
        for job_id, status in ((queued, "queued"), (running, "running")):
            body = expect_problem(owner.delete(f"/v1/jobs/{job_id}"), 409)
            assert body["type"] == "urn:lth:problem:job-active"
            assert status in body["detail"] and "cancel it first" in body["detail"]
            assert owner.get(f"/v1/jobs/{job_id}").json()["status"] == status
        assert backend.raw_keys(f"{running}/") == before

        # Cancelled, a queued job is finished at once and may then be deleted.
        assert owner.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"
        assert owner.delete(f"/v1/jobs/{queued}").status_code == 204


def test_another_tenants_or_unknown_job_is_not_found(
    backend: Backend, spec: dict[str, Any], tmp_path: Path, expect_problem: ProblemCheck
) -> None:
    live = backend.live
    with live.tenant_client() as owner, live.tenant_client() as stranger:
        job_id = _submit(owner, spec)
        _run_files(backend, job_id, tmp_path)
        _fail(backend, job_id)
        before = backend.raw_keys(f"{job_id}/")
        foreign = expect_problem(stranger.delete(f"/v1/jobs/{job_id}"), 404)
        missing = expect_problem(stranger.delete("/v1/jobs/job_" + "0" * 26), 404)
        assert foreign["detail"] == missing["detail"] and foreign["type"] == missing["type"]
        expect_problem(stranger.delete("/v1/jobs/not-a-job"), 404)
        assert backend.raw_keys(f"{job_id}/") == before
        assert owner.get(f"/v1/jobs/{job_id}").status_code == 200
        expect_problem(live.client().delete(f"/v1/jobs/{job_id}"), 401)


def test_delete_in_openapi(backend: Backend) -> None:
    with backend.live.client() as client:
        operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}"]["delete"]
    assert operation["summary"] and "cancel it first" in operation["description"]
    assert "204" in operation["responses"]
    for code in ("401", "404", "409"):
        assert "application/problem+json" in operation["responses"][code]["content"]
