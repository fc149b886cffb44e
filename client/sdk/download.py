"""Resumable, verified artifact downloads: the ``<dest>.part`` file and its rules.

Bytes go to ``<dest>.part`` while they arrive, so an interrupted download (a dropped connection,
a killed process) leaves a prefix that the next attempt continues with ``Range: bytes=<size>-``
and ``If-Range: <etag>``; if the file changed meanwhile the server sends it whole (200) and the
prefix is dropped. The finished file must hash to the ETag (the artifact's sha256) before it is
renamed onto ``dest``, so ``dest`` only ever holds a complete, verified file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from api_schemas.jobs import Artifact
from api_schemas.problem import Problem
from client.sdk.errors import ChecksumMismatch, NotFound, UnexpectedResponse

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect until they are verified."""
    return dest.with_name(dest.name + ".part")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def unquote_etag(etag: str | None) -> str | None:
    """The sha256 inside a strong ETag (``"<hex>"``); None for a weak or missing one."""
    if etag is None or etag.startswith("W/"):
        return None
    return etag.strip('"') or None


def target_in(dest_dir: Path, name: str) -> Path:
    """``dest_dir / name``, refusing names that would land outside ``dest_dir``."""
    root = dest_dir.resolve()
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"artifact name {name!r} points outside {dest_dir}")
    return target


def select_artifacts(
    job_id: str, artifacts: list[Artifact], names: Sequence[str] | None
) -> list[Artifact]:
    """The artifacts called ``names`` (all when None); a name the job lacks is a 404."""
    if names is None:
        return artifacts
    by_name = {a.name: a for a in artifacts}
    missing = [n for n in names if n not in by_name]
    if missing:
        detail = f"job {job_id} has no artifact {', '.join(map(repr, missing))}"
        raise NotFound(Problem(title="Not Found", status=404, detail=detail))
    return [by_name[n] for n in dict.fromkeys(names)]


class PartialDownload:
    """One artifact being downloaded into ``dest``, across any number of HTTP responses."""

    def __init__(self, dest: Path, name: str, expected_sha256: str | None) -> None:
        self.dest = dest
        self.name = name
        self.expected = expected_sha256
        self.part = part_path(dest)
        self.etag: str | None = f'"{expected_sha256}"' if expected_sha256 else None
        self.restarted = False
        self._digest = hashlib.sha256()
        self._size = 0
        self._out: IO[bytes] | None = None
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.part.exists():
            with self.part.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    self._digest.update(chunk)
                    self._size += len(chunk)

    @property
    def size(self) -> int:
        """Bytes already in the ``.part`` file."""
        return self._size

    def from_disk(self) -> Path | None:
        """``dest`` if it, or a complete ``.part``, already holds the expected content."""
        if self.expected is None:
            return None
        if self.dest.is_file() and sha256_of(self.dest) == self.expected:
            self.part.unlink(missing_ok=True)
            return self.dest
        if self._size > 0 and self._digest.hexdigest() == self.expected:
            self.part.replace(self.dest)
            return self.dest
        return None

    def needs_etag(self) -> bool:
        """A resume needs the ETag the prefix belongs to for ``If-Range``."""
        return self._size > 0 and self.etag is None

    def request_headers(self) -> dict[str, str]:
        """Range and If-Range to continue after the bytes we have (none for a fresh start)."""
        if self._size == 0 or self.etag is None:
            return {}
        return {"Range": f"bytes={self._size}-", "If-Range": self.etag}

    def restart(self) -> None:
        """Drop the prefix: the next response must bring the whole file."""
        self.close()
        self.part.unlink(missing_ok=True)
        self._digest = hashlib.sha256()
        self._size = 0

    def unsatisfiable(self) -> bool:
        """After a 416: whether to start over (our prefix was longer than the file)."""
        if self._size == 0 or self.restarted:
            return False
        self.restarted = True
        self.restart()
        return True

    def begin(self, response: httpx.Response) -> None:
        """Accept a 200 (the whole file: the prefix is dropped) or a 206 continuing our prefix."""
        etag = response.headers.get("etag")
        if etag and _SHA256.fullmatch(unquote_etag(etag) or ""):
            # The API's ETag is the sha256; an object store's (after a presigned redirect) is
            # its own, which says nothing about the content we check.
            self.etag = etag
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self._size:
                raise UnexpectedResponse(
                    f"{self.name}: asked for bytes from {self._size}, got "
                    f"{response.headers.get('content-range')!r}"
                )
        elif response.status_code == 200:
            self.restart()
        else:
            raise UnexpectedResponse(f"{self.name}: unexpected status {response.status_code}")
        self._out = self.part.open("ab")

    def write(self, chunk: bytes) -> None:
        """Append received bytes."""
        assert self._out is not None, "begin() first"
        self._out.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)

    def close(self) -> None:
        """Flush what arrived, so a later attempt can resume from it."""
        if self._out is not None:
            self._out.close()
            self._out = None

    def finish(self) -> Path | None:
        """Verify and move into place. Returns ``dest``; or None after dropping a corrupt or
        stale prefix the first time (the caller then downloads the whole file again)."""
        self.close()
        actual = self._digest.hexdigest()
        wanted = self.expected or unquote_etag(self.etag)
        if wanted is not None and actual != wanted:
            if not self.restarted:
                self.restarted = True
                self.restart()
                return None
            self.restart()
            raise ChecksumMismatch(self.name, wanted, actual)
        self.part.replace(self.dest)
        return self.dest
