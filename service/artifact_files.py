"""A job's artifacts, read from the artifact store.

A name is served only if it is a valid object key (:func:`store.artifact_store.check_key`: no
``..``, no absolute path, no backslash or NUL), not hidden or temporary, and the store says a
regular object lies under ``<job_id>/<name>``; the store itself refuses symlinks. So traversal
out of the job's prefix is impossible by construction, on the local filesystem and on S3 alike.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from api_schemas.run_layout import MANIFEST, ROUNDS, ArtifactEntry
from store.artifact_store import (
    ArtifactStore,
    InvalidKeyError,
    StoredObject,
    check_key,
    is_hidden,
)

log = logging.getLogger(__name__)

_MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".npz": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".csv": "text/csv",
    ".png": "image/png",
    ".txt": "text/plain",
    ".log": "text/plain",
}


@dataclass(frozen=True)
class ArtifactFile:
    """One servable object of a job: its artifact name and its store key."""

    name: str
    key: str
    size: int
    sha256: str
    media_type: str
    modified: datetime
    version: str


def job_prefix(job_id: str) -> str:
    """The store prefix of a job's run: ``<job_id>/``."""
    return f"{job_id}/"


def artifact_key(job_id: str, name: str) -> str:
    """The store key of artifact ``name`` of the job."""
    return f"{job_id}/{name}"


def media_type(name: str) -> str:
    """Content type for an artifact name."""
    suffix = PurePosixPath(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _manifest(store: ArtifactStore, job_id: str) -> dict[str, ArtifactEntry]:
    """The sizes and hashes the engine's manifest records, by artifact name (only its
    ``artifacts``: a run still being written has none, and an object it does not list is hashed
    by the store). Unreadable → empty."""
    try:
        raw_bytes = store.read_bytes(artifact_key(job_id, MANIFEST))
        data: Any = json.loads(raw_bytes) if raw_bytes is not None else None
    except (OSError, ValueError):
        return {}
    raw = data.get("artifacts") if isinstance(data, dict) else None
    entries: dict[str, ArtifactEntry] = {}
    for item in raw if isinstance(raw, list) else []:
        try:
            entry = ArtifactEntry.model_validate(item)
        except ValidationError:
            continue
        entries[entry.name] = entry
    return entries


def _describe(
    store: ArtifactStore, name: str, item: StoredObject, manifest: dict[str, ArtifactEntry]
) -> ArtifactFile:
    entry = manifest.get(name)
    sha = entry.sha256 if entry is not None and entry.size == item.size else store.sha256(item)
    return ArtifactFile(
        name=name,
        key=item.key,
        size=item.size,
        sha256=sha,
        media_type=media_type(name),
        modified=item.modified,
        version=item.version,
    )


def list_artifacts(store: ArtifactStore, job_id: str) -> list[ArtifactFile]:
    """Every servable object of the job, sorted by name."""
    prefix = job_prefix(job_id)
    items = {
        name: item for item in store.list(prefix) if _valid(name := item.key.removeprefix(prefix))
    }
    if not items:
        return []
    manifest = _manifest(store, job_id)
    return [_describe(store, name, items[name], manifest) for name in sorted(items)]


def _valid(name: str) -> bool:
    """A name a client may ask for (an S3 "folder" marker ``rounds/`` is none)."""
    try:
        check_key(name)
    except InvalidKeyError:
        return False
    return not is_hidden(name)


def stat_artifact(store: ArtifactStore, job_id: str, name: str) -> StoredObject | None:
    """The object of artifact ``name`` (no hash), None for an invalid, hidden or missing one."""
    return store.stat(artifact_key(job_id, name)) if _valid(name) else None


def find_artifact(store: ArtifactStore, job_id: str, name: str) -> ArtifactFile | None:
    """The artifact called ``name``, only if it is a regular, visible object of the job."""
    item = stat_artifact(store, job_id, name)
    if item is None:
        return None
    return _describe(store, name, item, _manifest(store, job_id))


def read_rounds(store: ArtifactStore, job_id: str) -> Any:
    """The parsed ``rounds.json`` (a list of RoundResult), or [] when absent."""
    data = store.read_bytes(artifact_key(job_id, ROUNDS))
    return [] if data is None else json.loads(data)
