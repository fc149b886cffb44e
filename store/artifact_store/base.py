"""What every artifact store offers: objects by key, listed, streamed, copied, deleted.

The API, the worker and the reports see a store only through this interface, so the local
filesystem (the embedded default) and S3-compatible object storage are interchangeable by one
setting. Keys are checked by :mod:`store.artifact_store.keys` before any store touches them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """One object. ``sha256`` is filled where the store knows it without reading the object
    (the worker records it on upload); :meth:`ArtifactStore.sha256` finds it otherwise.
    ``version`` changes whenever the content does (an mtime or an S3 ETag)."""

    key: str
    size: int
    modified: datetime
    version: str
    sha256: str | None = None


class ArtifactStore(ABC):
    """Objects under string keys (relative POSIX paths)."""

    #: The URL this store was opened from, for logs and the readiness check.
    url: str

    @abstractmethod
    def put_file(self, key: str, source: Path, *, sha256: str | None = None) -> None:
        """Store ``source`` under ``key``, atomically: readers see the old object or the new one,
        never part of it. ``sha256``, when the caller has it, saves hashing the file again."""

    @abstractmethod
    def get_file(self, key: str, destination: Path) -> bool:
        """Copy the object to ``destination`` (written atomically); False if there is none."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The whole object (for small ones: manifests, metrics), None if there is none."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The object's size, version and known hash, None if there is none."""

    @abstractmethod
    def list(self, prefix: str) -> list[StoredObject]:
        """Every servable object under ``prefix`` (``<job_id>/``), sorted by key; hidden and
        temporary names are left out."""

    @abstractmethod
    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of the object, in chunks."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object (nothing happens if there is none)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many there were."""

    def presigned_url(self, key: str, *, expires_s: int, filename: str) -> str | None:
        """A URL anyone holding it may GET the object from until it expires; None for a store
        that cannot make one (the local filesystem)."""
        return None

    def sha256(self, item: StoredObject) -> str:
        """The object's sha256: the recorded one, else computed by reading it."""
        if item.sha256 is not None:
            return item.sha256
        digest = hashlib.sha256()
        for chunk in self.open_range(item.key, 0, item.size - 1) if item.size else ():
            digest.update(chunk)
        return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file on disk, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stream_sha256(handle: BinaryIO) -> str:
    """sha256 of an open binary stream, read to its end."""
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
