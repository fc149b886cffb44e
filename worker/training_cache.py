"""The engine's training cache backed by the job store, for one job of one tenant.

Rows hold paths relative to the artifact root, and a row is data from the database, not a
promise: a lookup hands the engine a file only if it is a regular file that really lies in the
folder of the job that recorded it, so a corrupted row cannot make the worker read outside the
artifact root or another job's files. The cache is an optimisation, never a reason for a job to
fail: every database error is logged and treated as a miss.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from store.reuse import find_training, forget_training, record_training

log = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{64}")


class StoreTrainingCache:
    """A :class:`worker.engine.hooks.TrainingCache` that sees the tenant's other jobs only."""

    def __init__(
        self, sessions: sessionmaker[Session], tenant_id: str, job_id: str, artifact_root: Path
    ) -> None:
        self._sessions = sessions
        self._tenant_id = tenant_id
        self._job_id = job_id
        self._root = artifact_root.resolve()

    def lookup(self, key: str) -> Mapping[str, Path] | None:
        """The files of another job's training with this key, as absolute paths; None if there
        is none, its files are gone or invalid, or the store cannot be reached."""
        if not _KEY.fullmatch(key):
            log.warning("job %s: not a training key: %r", self._job_id, key)
            return None
        try:
            with self._sessions() as session:
                row = find_training(session, self._tenant_id, key)
                found = None if row is None else (row.job_id, row.files)
        except Exception:
            log.warning("job %s: training cache lookup failed", self._job_id, exc_info=True)
            return None
        if found is None or found[0] == self._job_id:
            return None
        owner, files = found
        paths = self._readable(owner, files)
        if paths is None:
            log.warning(
                "job %s: training %s of job %s has missing or invalid files; forgetting it",
                self._job_id,
                key,
                owner,
            )
            self._forget(key, owner)
        return paths

    def publish(self, key: str, files: Mapping[str, Path]) -> None:
        """Offer this job's finished files for ``key``; refused unless every one is a regular
        file in the job's own folder. Never raises: a lost entry only costs a later job time."""
        if not _KEY.fullmatch(key):
            log.warning("job %s: not publishing under a bad key: %r", self._job_id, key)
            return
        relative = self._relative(files)
        if relative is None:
            return
        try:
            with self._sessions.begin() as session:
                stored = record_training(session, self._tenant_id, key, self._job_id, relative)
        except Exception:
            log.warning("job %s: could not publish training %s", self._job_id, key, exc_info=True)
            return
        if not stored:
            log.info("job %s: training %s is already published", self._job_id, key)

    def _job_folder(self, job_id: str) -> Path | None:
        """``<root>/<job_id>``, or None when the id is not a plain folder name of the root."""
        folder = (self._root / job_id).resolve()
        return folder if folder.parent == self._root else None

    def _readable(self, owner: str, files: object) -> dict[str, Path] | None:
        folder = self._job_folder(owner)
        if folder is None or not isinstance(files, dict) or not files:
            return None
        paths: dict[str, Path] = {}
        for name, relative in files.items():
            if not isinstance(name, str) or not isinstance(relative, str):
                return None
            path = _inside(self._root / relative, folder)
            if path is None:
                return None
            paths[name] = path
        return paths

    def _relative(self, files: Mapping[str, Path]) -> dict[str, str] | None:
        folder = self._job_folder(self._job_id)
        if folder is None:
            log.warning("job %s: not publishing: the job id is not a folder name", self._job_id)
            return None
        if not files:
            log.warning("job %s: not publishing training without files", self._job_id)
            return None
        relative: dict[str, str] = {}
        for name, given in files.items():
            path = _inside(Path(given), folder)
            if path is None:
                log.warning(
                    "job %s: not publishing %s: %s is not a file in %s",
                    self._job_id,
                    name,
                    given,
                    folder,
                )
                return None
            relative[name] = path.relative_to(self._root).as_posix()
        return relative

    def _forget(self, key: str, owner: str) -> None:
        """Free a key whose files are gone, so the next job to train it can publish it."""
        try:
            with self._sessions.begin() as session:
                forget_training(session, self._tenant_id, key, owner)
        except Exception:
            log.warning("job %s: could not forget training %s", self._job_id, key, exc_info=True)


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` with every link resolved, if it is an existing regular file under ``folder``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    return real if real.is_relative_to(folder) and real.is_file() else None
