"""The worker's training cache over the real job store, a real artifact store (a local folder)
and real scratch folders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store import jobs, reuse
from store.artifact_store import LocalArtifactStore
from store.db import make_engine, make_sessionmaker
from store.tables import Tenant
from worker.engine.hooks import TrainingCache
from worker.run_publisher import RunPublisher
from worker.training_cache import StoreTrainingCache

Sessions = sessionmaker[Session]

KEY = "0123456789abcdef" * 4


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The workers' scratch root: one folder per job."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _job(sessions: Sessions, tenant: Tenant, spec: JobSpec) -> str:
    with sessions.begin() as session:
        return jobs.create_job(session, tenant.id, spec).job.id


def _cache(sessions: Sessions, tenant: Tenant, job_id: str, root: Path) -> TrainingCache:
    store = LocalArtifactStore(root.parent / "artifacts")
    return StoreTrainingCache(sessions, tenant.id, RunPublisher(store, job_id, root / job_id))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _training(root: Path, job_id: str) -> dict[str, Path]:
    """The files a finished round-0 training leaves in the job's folder."""
    folder = root / job_id / "rounds" / "0"
    return {
        "trained": _write(folder / "trained.safetensors", f"weights of {job_id}"),
        "metrics": _write(folder / "metrics.json", '{"accuracy": 0.9}'),
    }


def _stored(sessions: Sessions, tenant: Tenant) -> dict[str, str] | None:
    with sessions.begin() as session:
        row = reuse.find_training(session, tenant.id, KEY)
        return None if row is None else row.files


def test_round_trip(
    sessions: Sessions, tenant: Tenant, other_tenant: Tenant, spec: JobSpec, root: Path
) -> None:
    first, later = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    stranger = _job(sessions, other_tenant, spec)
    files = _training(root, first)
    assert _cache(sessions, tenant, later, root).lookup(KEY) is None

    _cache(sessions, tenant, first, root).publish(KEY, files)

    assert _stored(sessions, tenant) == {
        "trained": f"{first}/rounds/0/trained.safetensors",
        "metrics": f"{first}/rounds/0/metrics.json",
    }
    found = _cache(sessions, tenant, later, root).lookup(KEY)
    assert found is not None and set(found) == set(files)
    # Fetched from the store into the later job's own scratch folder, never read in place.
    assert all(path.is_relative_to(root / later) for path in found.values())
    assert {name: path.read_text() for name, path in found.items()} == {
        "trained": f"weights of {first}",
        "metrics": '{"accuracy": 0.9}',
    }
    assert _cache(sessions, tenant, first, root).lookup(KEY) is None  # never its own rows
    assert _cache(sessions, other_tenant, stranger, root).lookup(KEY) is None


def test_second_publisher_keeps_the_first(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, root: Path
) -> None:
    first, second, later = (_job(sessions, tenant, spec) for _ in range(3))
    _cache(sessions, tenant, first, root).publish(KEY, _training(root, first))
    _cache(sessions, tenant, second, root).publish(KEY, _training(root, second))
    found = _cache(sessions, tenant, later, root).lookup(KEY)
    assert found is not None and found["trained"].read_text() == f"weights of {first}"


def test_deleted_file_misses_and_frees_the_key(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, root: Path, store: LocalArtifactStore
) -> None:
    first, second, later = (_job(sessions, tenant, spec) for _ in range(3))
    files = _training(root, first)
    _cache(sessions, tenant, first, root).publish(KEY, files)
    files["metrics"].unlink()  # the scratch copy is not what counts: the store's is
    assert _cache(sessions, tenant, later, root).lookup(KEY) is not None
    store.delete(f"{first}/rounds/0/metrics.json")

    assert _cache(sessions, tenant, later, root).lookup(KEY) is None
    # The dead entry is gone, so the next job to finish that training can publish it.
    _cache(sessions, tenant, second, root).publish(KEY, _training(root, second))
    found = _cache(sessions, tenant, later, root).lookup(KEY)
    assert found is not None and found["trained"].read_text() == f"weights of {second}"


def test_a_directory_is_not_a_file(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, root: Path, store: LocalArtifactStore
) -> None:
    first, later = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    _cache(sessions, tenant, first, root).publish(KEY, _training(root, first))
    trained = store.root / first / "rounds" / "0" / "trained.safetensors"
    trained.unlink()
    trained.mkdir()
    assert _cache(sessions, tenant, later, root).lookup(KEY) is None


@pytest.mark.parametrize(
    "recorded",
    [
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "{first}/../../outside.txt",
        "{first}/link-out",
        "{neighbour}/rounds/0/trained.safetensors",
        "{first}/rounds/0",
    ],
)
def test_recorded_paths_never_leave_the_jobs_folder(
    sessions: Sessions,
    tenant: Tenant,
    spec: JobSpec,
    root: Path,
    store: LocalArtifactStore,
    recorded: str,
) -> None:
    first, neighbour, later = (_job(sessions, tenant, spec) for _ in range(3))
    for job_id in (first, neighbour):
        for path in _training(root, job_id).values():
            store.put_file(path.relative_to(root).as_posix(), path)
    outside = _write(root.parent / "outside.txt", "secret")
    (store.root / first / "link-out").symlink_to(outside)
    path = recorded.format(first=first, neighbour=neighbour)
    with sessions.begin() as session:
        good = f"{first}/rounds/0/metrics.json"
        assert reuse.record_training(
            session, tenant.id, KEY, first, {"metrics": good, "trained": path}
        )
    assert _cache(sessions, tenant, later, root).lookup(KEY) is None
    with sessions.begin() as session:  # the same row with a good path is found: the test can fail
        reuse.forget_training(session, tenant.id, KEY, first)
        trained = f"{first}/rounds/0/trained.safetensors"
        reuse.record_training(session, tenant.id, KEY, first, {"metrics": good, "trained": trained})
    assert _cache(sessions, tenant, later, root).lookup(KEY) is not None


def test_a_job_id_that_is_a_path_is_refused(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _job(sessions, tenant, spec)
    files = _training(root, job_id)
    with caplog.at_level(logging.WARNING, logger="worker.training_cache"):
        _cache(sessions, tenant, "..", root).publish(KEY, files)
        _cache(sessions, tenant, f"{job_id}/rounds", root).publish(KEY, files)
    assert sum("not a folder name" in r.message for r in caplog.records) == 2
    assert _stored(sessions, tenant) is None


def test_publish_refuses_files_outside_the_jobs_folder(
    sessions: Sessions,
    tenant: Tenant,
    spec: JobSpec,
    root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine, neighbour = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    own = _training(root, mine)
    outside = _write(root.parent / "outside.txt", "secret")
    link = root / mine / "link-out"
    link.symlink_to(outside)
    cache = _cache(sessions, tenant, mine, root)
    with caplog.at_level(logging.WARNING, logger="worker.training_cache"):
        cache.publish(KEY, {**own, "trained": _training(root, neighbour)["trained"]})
        cache.publish(KEY, {**own, "trained": outside})
        cache.publish(KEY, {**own, "trained": link})
        cache.publish(KEY, {**own, "trained": root / mine / "rounds" / "0" / "missing"})
        cache.publish(KEY, {})
    assert _stored(sessions, tenant) is None
    assert sum("not publishing" in r.message for r in caplog.records) == 5

    cache.publish(KEY, own)
    assert _stored(sessions, tenant) is not None


def test_bad_keys_are_neither_looked_up_nor_published(
    sessions: Sessions, tenant: Tenant, spec: JobSpec, root: Path
) -> None:
    first, later = _job(sessions, tenant, spec), _job(sessions, tenant, spec)
    files = _training(root, first)
    for bad in ("", "A" * 64, KEY + "0", "' OR 1=1 --"):
        _cache(sessions, tenant, first, root).publish(bad, files)
        assert _cache(sessions, tenant, later, root).lookup(bad) is None
    with sessions.begin() as session:
        assert reuse.forget_job(session, first) == 0


@pytest.mark.parametrize("backend", ["unmigrated", "unreachable"])
def test_a_broken_database_is_a_miss(
    tmp_path: Path, root: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'empty.db'}"
        if backend == "unmigrated"
        else "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    )
    engine = make_engine(url)
    try:
        publisher = RunPublisher(
            LocalArtifactStore(tmp_path / "artifacts"), "job_x", root / "job_x"
        )
        cache = StoreTrainingCache(make_sessionmaker(engine), "ten_x", publisher)
        files = _training(root, "job_x")
        with caplog.at_level(logging.WARNING, logger="worker.training_cache"):
            assert cache.lookup(KEY) is None
            cache.publish(KEY, files)
    finally:
        engine.dispose()
    messages = [r.message for r in caplog.records if r.exc_info]
    assert any("lookup failed" in m for m in messages)
    assert any("could not publish" in m for m in messages)
