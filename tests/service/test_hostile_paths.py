"""Hostile file locations in a spec, over real HTTP: a tenant never reaches another's upload.

The admission check and the worker parse ``model.weights`` and file dataset URIs with the same
function, so a location that would open another file than the one checked is refused here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ProblemCheck = Callable[..., dict[str, Any]]
Spec = dict[str, Any]
UP = "/.." * 40  # more than enough to climb from any temporary directory to /


def _spec(**model: Any) -> Spec:
    return {
        "model": {"arch": "lenet_300_100", **model},
        "dataset": {
            "uri": "synthetic://?classes=10&shape=1,28,28&train=200&test=50",
            "validation_size": 20,
        },
        "training": {"batch_size": 20, "steps": "30it", "eval_every": "10it"},
        "pruning": {"rounds": 1},
    }


def _upload(client: httpx.Client) -> str:
    """Upload a tiny dataset; its id."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((20, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(20, dtype=np.int64) % 2,
        x_test=rng.random((4, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(4, dtype=np.int64) % 2,
    )
    response = client.post("/v1/datasets", files={"file": ("victim.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    dataset_id: str = response.json()["id"]
    return dataset_id


@pytest.fixture(scope="module")
def victim_upload(live: Any) -> Path:
    """Another tenant's uploaded file, where the (local) artifact store keeps it."""
    with live.tenant_client() as victim:
        dataset_id = _upload(victim)
    (stored,) = (live.settings.artifact_root / "uploads").glob(f"*/datasets/{dataset_id}.npz")
    return Path(stored)


def _tenant_folder(upload: Path) -> str:
    """``<tenant>/datasets/<file>`` of a stored upload."""
    return upload.relative_to(upload.parents[2]).as_posix()


def _data_root(live: Any) -> Path:
    root: Path = live.settings.home / "data"
    assert root in live.settings.data_roots
    return root


def _refused(client: httpx.Client, spec: Spec, check: ProblemCheck, loc: str) -> str:
    body = check(client.post("/v1/jobs", json=spec), 422)
    assert body["type"] == "urn:lth:problem:validation"
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(loc, "path_not_allowed")], body
    message: str = body["errors"][0]["msg"]
    return message


def _nothing_stored(client: httpx.Client, live: Any, enqueued: int) -> None:
    assert client.get("/v1/jobs").json()["data"] == []
    assert len(live.enqueued) == enqueued


def test_hostile_weights_are_refused_and_nothing_is_stored(
    live: Any, victim_upload: Path, expect_problem: ProblemCheck, tmp_path: Path
) -> None:
    data = _data_root(live)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"not for jobs")
    (data / "to-victim.safetensors").symlink_to(victim_upload)
    (data / "to-outside.safetensors").symlink_to(outside)
    hostile = {
        # A query or fragment that one parser drops and the other resolves `..` through.
        "query": f"{victim_upload}?{UP}/usr/share/datasets",
        "query into a data root": f"{victim_upload}?/../../../data",
        "fragment": f"{victim_upload}#{UP}/usr/share/datasets",
        "file URI query": f"file://{victim_upload}?{UP}/usr/share/datasets",
        "file URI fragment": f"file://{victim_upload}#{UP}/usr/share/datasets",
        "file URI host": f"file://localhost{data}/w.safetensors",
        "another tenant's upload": str(victim_upload),
        "file URI of it": f"file://{victim_upload}",
        "the upload area itself": str(live.settings.upload_root),
        "the artifact store itself": str(live.settings.artifact_root),
        "symlink to an upload": str(data / "to-victim.safetensors"),
        "symlink out of the roots": str(data / "to-outside.safetensors"),
        "dot-dot into the uploads": f"{data}/../artifacts/uploads/{_tenant_folder(victim_upload)}",
        "dot-dot out of the roots": "/usr/share/datasets/../../../etc/passwd",
        "absolute path elsewhere": "/etc/passwd",
        "unknown scheme": "s3://bucket/weights.safetensors",
        "http": f"http://127.0.0.1{data}/w.safetensors",
        "relative path": "weights.safetensors",
        "escaped NUL": f"file://{data}/w%00.safetensors",
    }
    enqueued = len(live.enqueued)
    with live.tenant_client() as attacker:
        for case, weights in hostile.items():
            message = _refused(attacker, _spec(weights=weights), expect_problem, "model.weights")
            assert message and "Value error" not in message, case
        _nothing_stored(attacker, live, enqueued)
        # Admission does not open the file, so a well-formed path in a data root is accepted.
        for weights in (f"{data}/w.safetensors", f"file://{data}/w.safetensors"):
            assert attacker.post("/v1/jobs", json=_spec(weights=weights)).status_code == 202


def test_hostile_dataset_uris_are_refused_and_nothing_is_stored(
    live: Any, victim_upload: Path, expect_problem: ProblemCheck
) -> None:
    data, uploads = _data_root(live), live.settings.upload_root
    hostile = [
        # Naming the upload area's root would read every tenant's files.
        f"imagefolder://{uploads}",
        f"imagefolder://{data}/../datasets",
        f"imagefolder://{live.settings.artifact_root}",
        f"npz://{data}/set.npz#/../../artifacts/uploads/{_tenant_folder(victim_upload)}",
        f"npz://{data}/set.npz?/../../artifacts/uploads/{_tenant_folder(victim_upload)}",
        f"npz://{victim_upload}",
        f"npz://{victim_upload}?x=1",
        f"npz://localhost{data}/set.npz",
        "npz:///etc/passwd",
    ]
    enqueued = len(live.enqueued)
    with live.tenant_client() as attacker:
        for uri in hostile:
            spec = _spec()
            spec["dataset"]["uri"] = uri
            assert _refused(attacker, spec, expect_problem, "dataset.uri"), uri
        _nothing_stored(attacker, live, enqueued)
