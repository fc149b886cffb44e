"""Artifact downloads (sha256-verified, resumed with Range after an interruption) and dataset
uploads through the SDK, against a real ``lth serve``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from lth_client_support import CuttingProxy, Server, small_spec

from client.sdk import Client, NotFound, ValidationFailed
from client.sdk.download import part_path

pytestmark = pytest.mark.e2e


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_all_verifies_every_file(
    server: Server, finished_job: str, tmp_path: Path
) -> None:
    with server.client() as client:
        listing = {a.name: a for a in client.list_artifacts(finished_job)}
        assert {"ticket.safetensors", "mask.safetensors", "rounds.json"} <= set(listing)
        paths = client.download_all(finished_job, tmp_path / "all")
        assert len(paths) == len(listing)
        for path in paths:
            name = path.relative_to((tmp_path / "all").resolve()).as_posix()
            assert sha256(path) == listing[name].sha256
            assert path.stat().st_size == listing[name].size
        assert not list((tmp_path / "all").rglob("*.part"))

        some = client.download_all(
            finished_job, tmp_path / "some", names=["rounds/1/mask.safetensors"]
        )
        assert some == [(tmp_path / "some" / "rounds/1/mask.safetensors").resolve()]
        with pytest.raises(NotFound):
            client.download_all(finished_job, tmp_path / "none", names=["nope.bin"])


def test_truncated_part_file_is_resumed_with_range(
    server: Server, finished_job: str, tmp_path: Path
) -> None:
    exchanges: list[tuple[str, dict[str, str], int]] = []

    def record(response: httpx.Response) -> None:
        request = response.request
        exchanges.append((request.method, dict(request.headers), response.status_code))

    with server.client(event_hooks={"response": [record]}) as client:
        artifact = next(
            a for a in client.list_artifacts(finished_job) if a.name == "trained.safetensors"
        )
        whole = client.download_artifact(finished_job, artifact.name, tmp_path / "whole")
        assert sha256(whole) == artifact.sha256
        content = whole.read_bytes()

        # An interrupted earlier download left the first part of the file behind.
        dest = tmp_path / "resumed" / "trained.safetensors"
        dest.parent.mkdir()
        half = len(content) // 2
        part_path(dest).write_bytes(content[:half])
        exchanges.clear()
        assert client.download_artifact(finished_job, artifact.name, dest) == dest
        assert dest.read_bytes() == content and not part_path(dest).exists()
        method, headers, status = exchanges[-1]
        assert (method, status) == ("GET", 206)
        assert headers["range"] == f"bytes={half}-"
        assert headers["if-range"] == f'"{artifact.sha256}"'
        assert exchanges[0][0] == "HEAD", "without a known sha256 the ETag is looked up first"

        # A prefix that is not the file's (a stale or corrupt .part) is thrown away.
        dest.unlink()
        part_path(dest).write_bytes(b"x" * half)
        exchanges.clear()
        client.download_artifact(finished_job, artifact.name, dest, sha256=artifact.sha256)
        assert dest.read_bytes() == content
        assert [status for _, _, status in exchanges] == [206, 200]

        # Already there and intact: nothing is fetched.
        exchanges.clear()
        client.download_artifact(finished_job, artifact.name, dest, sha256=artifact.sha256)
        assert exchanges == []


def test_dropped_download_resumes_in_the_same_call(
    server: Server,
    finished_job: str,
    tmp_path: Path,
    cutting_proxy: Callable[[int], CuttingProxy],
) -> None:
    with server.client() as client:
        artifact = next(
            a for a in client.list_artifacts(finished_job) if a.name == "trained.safetensors"
        )
    proxy = cutting_proxy(1500)  # the headers and about 1 kB of the body, then a reset
    statuses: list[int] = []
    with Client(
        proxy.url,
        backoff=0.05,
        event_hooks={"response": [lambda r: statuses.append(r.status_code)]},
    ) as client:
        dest = client.download_artifact(
            finished_job, artifact.name, tmp_path / "t.safetensors", sha256=artifact.sha256
        )
    assert sha256(dest) == artifact.sha256
    assert statuses == [200, 206]
    assert b"range: bytes=" in bytes(proxy.requests[1]).lower()


def blobs_npz(path: Path) -> Path:
    """A small real dataset: 3 classes of noisy 2x4x4 blobs, saved with numpy.savez."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 2, 4, 4)).astype(np.float32) * 3
    y_train, y_test = rng.integers(0, 3, 240), rng.integers(0, 3, 90)
    np.savez(
        path,
        x_train=centers[y_train] + rng.normal(size=(240, 2, 4, 4)).astype(np.float32),
        y_train=y_train,
        x_test=centers[y_test] + rng.normal(size=(90, 2, 4, 4)).astype(np.float32),
        y_test=y_test,
    )
    return path


def test_upload_list_and_delete_datasets(server: Server, tmp_path: Path) -> None:
    file = blobs_npz(tmp_path / "blobs.npz")
    with server.client() as client:
        dataset = client.upload_dataset(file, name="blobs")
        assert (dataset.name, dataset.format, dataset.num_classes) == ("blobs", "npz", 3)
        assert (dataset.train_size, dataset.test_size, dataset.input_shape) == (240, 90, [2, 4, 4])
        assert dataset.sha256 == sha256(file)
        assert dataset.uri == f"dataset://{dataset.id}"
        assert dataset.id in [d.id for d in client.list_datasets()]
        assert client.get_dataset(dataset.id) == dataset

        client.delete_dataset(dataset.id)
        with pytest.raises(NotFound):
            client.get_dataset(dataset.id)
        with pytest.raises(NotFound):
            client.delete_dataset(dataset.id)

        not_data = tmp_path / "notes.npz"
        not_data.write_bytes(b"not a zip archive")
        with pytest.raises(ValidationFailed) as rejected:
            client.upload_dataset(not_data)
        assert rejected.value.errors[0].loc == "file"

        models = {m.name: m for m in client.list_models()}
        assert {"lenet_300_100", "mlp", "resnet20"} <= set(models)
        assert models["lenet_300_100"].parameters == 266_610


def test_train_on_an_uploaded_dataset(
    server: Server, tmp_path: Path, unique_label: dict[str, str]
) -> None:
    with server.client() as client:
        dataset = client.upload_dataset(blobs_npz(tmp_path / "blobs.npz"))
        spec = small_spec(labels=unique_label)
        spec["dataset"] = {"uri": dataset.uri, "validation_size": 40}
        job = client.wait(client.create_job(spec).id, poll_interval=0.1, timeout=120)
        assert job.status == "succeeded", job.error
        assert len(client.rounds(job.id)) == 2
