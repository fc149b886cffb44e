"""The artifact store on the local filesystem: today's layout, ``<root>/<job_id>/…``.

The embedded default, and a deployment's choice when every host mounts the same volume. A key is
opened only if no component of its path is a symlink and the object is a regular file, so a link
planted in a run folder can never make the API serve (or the worker read) a file outside it.
Writes go to a hidden temporary file in the destination folder and are renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from store.artifact_store.base import CHUNK, ArtifactStore, StoredObject, file_sha256
from store.artifact_store.keys import check_key, check_prefix, is_hidden


@lru_cache(maxsize=4096)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, cached by (path, size, mtime) so a big ticket is hashed once."""
    return file_sha256(Path(path))


def copy_atomically(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` through a hidden temporary file in its folder."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri() if root.is_absolute() else f"file:{root}"

    # ---- paths --------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _regular(self, key: str) -> tuple[Path, os.stat_result] | None:
        """The key's file and its stat, if every component below the root is a plain folder
        (no symlink) and the last a regular file."""
        path = self.root
        parts = check_key(key).split("/")
        try:
            for index, part in enumerate(parts):
                path = path / part
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    return None
                if index < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
                    return None
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (path, info) if stat.S_ISREG(info.st_mode) else None

    @staticmethod
    def _object(key: str, info: os.stat_result) -> StoredObject:
        return StoredObject(
            key=key,
            size=info.st_size,
            modified=datetime.fromtimestamp(info.st_mtime, UTC),
            version=f"{info.st_size}-{info.st_mtime_ns}",
        )

    # ---- the interface ------------------------------------------------------------------------

    def put_file(self, key: str, source: Path, *, sha256: str | None = None) -> None:
        copy_atomically(source, self._path(key))

    def get_file(self, key: str, destination: Path) -> bool:
        found = self._regular(key)
        if found is None:
            return False
        copy_atomically(found[0], destination)
        return True

    def read_bytes(self, key: str) -> bytes | None:
        found = self._regular(key)
        if found is None:
            return None
        try:
            return found[0].read_bytes()
        except FileNotFoundError:  # removed since
            return None

    def stat(self, key: str) -> StoredObject | None:
        found = self._regular(key)
        return None if found is None else self._object(key, found[1])

    def list(self, prefix: str) -> list[StoredObject]:
        prefix = check_prefix(prefix)
        top = self.root.joinpath(*prefix.rstrip("/").split("/")) if prefix else self.root
        try:
            if stat.S_ISLNK(os.lstat(top).st_mode):
                return []
        except FileNotFoundError:
            return []
        found: list[StoredObject] = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                if is_hidden(key):
                    continue
                try:
                    info = os.lstat(path)
                except FileNotFoundError:  # removed while walking
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(self._object(key, info))
        return sorted(found, key=lambda item: item.key)

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        found = self._regular(key)
        if found is None:
            raise FileNotFoundError(key)
        handle = found[0].open("rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                handle.seek(start)
                left = end - start + 1
                while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                    left -= len(chunk)
                    yield chunk

        return chunks()

    def delete(self, key: str) -> None:
        if self._regular(key) is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole store")
        top = self.root.joinpath(*prefix.rstrip("/").split("/"))
        try:
            if not stat.S_ISDIR(os.lstat(top).st_mode):  # a link or a file: not a run folder
                return 0
        except FileNotFoundError:
            return 0
        count = sum(len(files) for _, _, files in os.walk(top, followlinks=False))
        shutil.rmtree(top, ignore_errors=True)
        return count

    def sha256(self, item: StoredObject) -> str:
        if item.sha256 is not None:
            return item.sha256
        found = self._regular(item.key)
        if found is None:
            raise FileNotFoundError(item.key)
        path, info = found
        return _cached_sha256(str(path), info.st_size, info.st_mtime_ns)
