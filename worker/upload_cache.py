"""Uploaded datasets and models, fetched from the artifact store into a worker's cache.

The API puts an upload into the store under ``uploads/<tenant>/…`` and records its key and sha256;
a worker on any host fetches it once into ``<home>/cache/<sha256><suffix>`` and verifies the hash
before it is used, so every later job with that upload reads a local, checked file. Entries are
named by content, so one never goes stale; a deleted upload's entry is only disk space (remove the
cache folder to reclaim it). Rows from before uploads went to the store hold an absolute path on
the service's disk, which is used as it is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

from store.artifact_store import ArtifactStore, file_sha256

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadUnavailableError(Exception):
    """The upload is gone from the store, or what the store holds is not what was uploaded."""


def cached_upload(store: ArtifactStore, location: str, sha256: str, cache_root: Path) -> Path:
    """A local, verified copy of the upload stored at ``location`` (a store key)."""
    if Path(location).is_absolute():  # recorded before uploads went to the store
        return Path(location)
    if not _SHA256.fullmatch(sha256):
        raise UploadUnavailableError(f"{location}: no valid sha256 recorded")
    suffix = "".join(PurePosixPath(location).suffixes[-1:])
    path = cache_root / f"{sha256}{suffix}"
    if path.is_file() and not path.is_symlink():
        return path
    partial = cache_root / f".{sha256}.{hashlib.sha256(location.encode()).hexdigest()[:8]}.part"
    if not store.get_file(location, partial):
        raise UploadUnavailableError(f"{location} is not in the artifact store")
    try:
        if file_sha256(partial) != sha256:
            raise UploadUnavailableError(f"{location}: the stored file does not match its sha256")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
