"""Mirroring a run's scratch folder to the artifact store: what goes, when, and what never does."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from store.artifact_store import ArtifactStore, LocalArtifactStore, open_artifact_store
from store.settings import Settings
from tests.conftest import settings_fields
from worker.run_publisher import RunPublisher

JOB = "job_0123456789abcdefghjkmnpqrs"


def _write(path: Path, data: bytes, age_s: float = 5.0) -> Path:
    """A file as the engine leaves it, last modified ``age_s`` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _keys(store: ArtifactStore) -> dict[str, bytes | None]:
    return {item.key: store.read_bytes(item.key) for item in store.list(f"{JOB}/")}


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def test_publishes_finished_files_and_mirrors_removals(
    store: ArtifactStore, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    publisher = RunPublisher(store, JOB, scratch)
    _write(scratch / "spec.json", b"{}")
    checkpoint = _write(scratch / "rounds/0/checkpoint.safetensors", b"step 1000")
    _write(scratch / "rounds/0/.trained.safetensors.abc.tmp", b"half")  # in flight
    _write(scratch / ".report-draft.html", b"draft")
    assert publisher.publish() == 2
    assert _keys(store) == {
        f"{JOB}/rounds/0/checkpoint.safetensors": b"step 1000",
        f"{JOB}/spec.json": b"{}",
    }
    assert publisher.publish() == 0  # nothing changed, nothing sent

    _write(checkpoint, b"step 2000", age_s=2)
    _write(scratch / "rounds/0/trained.safetensors", b"weights", age_s=1)
    assert publisher.publish() == 2
    assert store.read_bytes(f"{JOB}/rounds/0/checkpoint.safetensors") == b"step 2000"

    checkpoint.unlink()  # the round finished: its checkpoint goes from the store too
    assert publisher.publish() == 1
    assert set(_keys(store)) == {f"{JOB}/spec.json", f"{JOB}/rounds/0/trained.safetensors"}


def test_a_file_written_during_the_pass_waits_for_the_next(
    store: ArtifactStore, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    publisher = RunPublisher(store, JOB, scratch)
    _write(scratch / "rounds/0/trained.safetensors", b"weights")
    _write(scratch / "rounds/0/metrics.json", b"{}", age_s=-2)  # written as the pass runs
    assert publisher.publish() == 1
    assert set(_keys(store)) == {f"{JOB}/rounds/0/trained.safetensors"}
    assert publisher.publish(final=True) == 1
    assert set(_keys(store)) == {
        f"{JOB}/rounds/0/trained.safetensors",
        f"{JOB}/rounds/0/metrics.json",
    }


def test_nothing_is_published_after_the_final_pass(store: ArtifactStore, tmp_path: Path) -> None:
    """A periodic pass still due from the heartbeat thread, once the final pass is done and
    the folder is being removed, must not take the missing files for removals."""
    scratch = tmp_path / "scratch"
    publisher = RunPublisher(store, JOB, scratch)
    _write(scratch / "rounds/0/trained.safetensors", b"weights")
    ticket = _write(scratch / "ticket.safetensors", b"ticket")
    assert publisher.publish(final=True) == 2
    ticket.unlink()  # the folder's removal under way
    assert publisher.publish() == 0
    publisher.discard()
    assert publisher.publish() == 0
    publisher.upload([scratch / "rounds/0/trained.safetensors"])  # gone, and never read
    assert set(_keys(store)) == {f"{JOB}/rounds/0/trained.safetensors", f"{JOB}/ticket.safetensors"}


def test_a_worker_that_lost_its_job_publishes_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    owned = [True]
    publisher = RunPublisher(store, JOB, scratch, allowed=lambda: owned[0])
    kept = _write(scratch / "rounds/0/checkpoint.safetensors", b"mine")
    publisher.publish()
    owned[0] = False
    _write(scratch / "rounds/0/trained.safetensors", b"stale")
    kept.unlink()
    assert publisher.publish(final=True) == 0
    assert _keys(store) == {f"{JOB}/rounds/0/checkpoint.safetensors": b"mine"}


def test_fetch_brings_another_hosts_run(tmp_path: Path, s3_env: dict[str, str]) -> None:
    store = open_artifact_store(Settings(home=tmp_path, **settings_fields(s3_env)))
    first = RunPublisher(store, JOB, tmp_path / "host-a" / JOB / "1")
    _write(first.folder / "state/init.safetensors", b"init")
    _write(first.folder / "rounds/1/checkpoint.safetensors", b"step 3000")
    first.publish()

    second = RunPublisher(store, JOB, tmp_path / "host-b" / JOB / "2")
    _write(second.folder / "state/init.safetensors", b"kept")  # this host's copy stays
    assert second.fetch() == 1
    assert (second.folder / "rounds/1/checkpoint.safetensors").read_bytes() == b"step 3000"
    assert (second.folder / "state/init.safetensors").read_bytes() == b"kept"
    assert second.publish() == 1  # the kept file is published again; the fetched one is not
    second.discard()
    assert not second.folder.exists() and not second.folder.parent.exists()
