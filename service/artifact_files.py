"""A job's artifact folder, read safely.

Names are never joined onto a path and opened: the folder is walked (regular files only, no
symlinks, no hidden or temporary files) and a name is served only if the walk produced it, so
``..``, absolute paths and symlinks out of the folder are impossible by construction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api_schemas.run_layout import MANIFEST, ROUNDS, ArtifactEntry

log = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".tmp", ".part", ".partial")
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
    """One servable file of a job."""

    name: str
    path: Path
    size: int
    sha256: str
    media_type: str


def _hidden_or_temporary(name: str) -> bool:
    parts = name.split("/")
    return any(p.startswith(".") for p in parts) or name.endswith(_TEMP_SUFFIXES)


def _walk(job_dir: Path) -> dict[str, tuple[Path, os.stat_result]]:
    """Regular files under ``job_dir`` by relative POSIX name; symlinks are skipped."""
    files: dict[str, tuple[Path, os.stat_result]] = {}
    try:
        if stat.S_ISLNK(os.lstat(job_dir).st_mode):
            return files
    except FileNotFoundError:
        return files
    for dirpath, dirnames, filenames in os.walk(job_dir, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            path = Path(dirpath) / filename
            name = path.relative_to(job_dir).as_posix()
            if _hidden_or_temporary(name):
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed while walking
                continue
            if stat.S_ISREG(info.st_mode):
                files[name] = (path, info)
    return files


def _manifest(job_dir: Path) -> dict[str, ArtifactEntry]:
    """The sizes and hashes the engine's manifest records, by artifact name (only its
    ``artifacts``: a run still being written has none, and a file it does not list is hashed
    here). Unreadable → empty."""
    path = job_dir / MANIFEST
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return {}
        data: Any = json.loads(path.read_text())
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


@lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached by (path, size, mtime) so a big ticket is hashed once."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def media_type(name: str) -> str:
    """Content type for an artifact name."""
    suffix = Path(name).suffix.lower()
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _describe(
    name: str, path: Path, info: os.stat_result, manifest: dict[str, ArtifactEntry]
) -> ArtifactFile:
    entry = manifest.get(name)
    if entry is not None and entry.size == info.st_size:
        sha = entry.sha256
    else:
        sha = _sha256(str(path), info.st_size, info.st_mtime_ns)
    return ArtifactFile(name, path, info.st_size, sha, media_type(name))


def list_artifacts(job_dir: Path) -> list[ArtifactFile]:
    """Every servable file of the job, sorted by name."""
    manifest = _manifest(job_dir)
    files = _walk(job_dir)
    return [_describe(name, *files[name], manifest) for name in sorted(files)]


def find_artifact(job_dir: Path, name: str) -> ArtifactFile | None:
    """The artifact called ``name``, only if the folder walk lists it."""
    found = _walk(job_dir).get(name)
    if found is None:
        return None
    return _describe(name, *found, _manifest(job_dir))


def read_rounds(job_dir: Path) -> Any:
    """The parsed ``rounds.json`` (a list of RoundResult), or [] when absent."""
    found = _walk(job_dir).get(ROUNDS)
    if found is None:
        return []
    return json.loads(found[0].read_text())
