"""The live service on each artifact store: the local folder, and S3 (a real moto server).

Tests put a run's files into the store the way the worker publishes them (``put_file``) and then
read them back over HTTP, so every route is checked against both stores.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.state import state_of
from store.artifact_store import ArtifactStore, LocalArtifactStore
from store.artifact_store.s3 import S3ArtifactStore
from tests.conftest import new_bucket_env, settings_fields
from tests.service.conftest import LiveService, ServiceFactory

KINDS = ["local", "s3"]


def bucket_settings(endpoint: str) -> dict[str, Any]:
    """Settings fields of a fresh, empty bucket on the S3 server, under a prefix."""
    return dict(settings_fields(new_bucket_env(endpoint)))


@dataclass
class Backend:
    """A live service and the store it reads."""

    kind: str
    live: LiveService
    store: ArtifactStore

    def put(self, key: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "object"
            source.write_bytes(data)
            self.store.put_file(key, source)

    def publish(self, job_id: str, folder: Path) -> None:
        """Every regular file of a run folder, under ``<job_id>/``."""
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.store.put_file(f"{job_id}/{path.relative_to(folder).as_posix()}", path)

    def raw_keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, hidden and temporary ones too (what ``list`` skips)."""
        if isinstance(self.store, S3ArtifactStore):
            location = self.store.location
            pages = self.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.prefix + prefix
            )
            return sorted(
                item["Key"].removeprefix(location.prefix)
                for page in pages
                for item in page.get("Contents", [])
            )
        assert isinstance(self.store, LocalArtifactStore)
        root = self.store.root
        return sorted(
            path.relative_to(root).as_posix()
            for path in root.rglob("*")
            if not path.is_dir() and path.relative_to(root).as_posix().startswith(prefix)
        )


def start_backend(
    request: pytest.FixtureRequest, service_factory: ServiceFactory, kind: str, **overrides: Any
) -> Backend:
    """A service of its own on the ``kind`` store (a new bucket for S3)."""
    if kind == "s3":
        overrides = {**bucket_settings(request.getfixturevalue("s3_endpoint")), **overrides}
    live = service_factory(**overrides)
    return Backend(kind, live, state_of(live.app).artifacts)
