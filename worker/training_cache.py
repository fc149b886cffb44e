"""The engine's training cache backed by the job store and the artifact store, for one job.

A row names the store keys of another job's finished training (``<job_id>/rounds/…``). A row is
data from the database, not a promise: a lookup hands the engine files only if every key is a
plain key inside the folder of the job that recorded it and the store holds it, and they are
fetched into a hidden folder of this job's scratch folder first, so a corrupted row cannot make
the worker read another job's files or anything outside the store. Publishing uploads the files
before recording the row, so a row never names files the store lacks. The cache is an
optimisation, never a reason for a job to fail: every database or store error is logged and
treated as a miss.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from store.artifact_store import InvalidKeyError, check_key
from store.reuse import find_training, forget_training, record_training
from worker.run_publisher import RunPublisher

log = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{64}")
#: Where fetched trainings wait in the scratch folder until the engine has copied them.
REUSE_FOLDER = ".reuse"


class StoreTrainingCache:
    """A :class:`worker.engine.hooks.TrainingCache` that sees the tenant's other jobs only."""

    def __init__(
        self, sessions: sessionmaker[Session], tenant_id: str, publisher: RunPublisher
    ) -> None:
        self._sessions = sessions
        self._tenant_id = tenant_id
        self._publisher = publisher
        self._job_id = publisher.job_id

    def lookup(self, key: str) -> Mapping[str, Path] | None:
        """Local copies of another job's training with this key; None if there is none, its
        files are gone or invalid, or a store cannot be reached."""
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
        try:
            paths = self._fetch(key, owner, files)
        except Exception:
            log.warning("job %s: could not fetch training %s", self._job_id, key, exc_info=True)
            return None
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
        file in the job's own scratch folder. Never raises: a lost entry only costs a later job
        time."""
        if not _KEY.fullmatch(key):
            log.warning("job %s: not publishing under a bad key: %r", self._job_id, key)
            return
        keys = self._keys(files)
        if keys is None:
            return
        try:
            self._publisher.upload(files.values())
            with self._sessions.begin() as session:
                stored = record_training(session, self._tenant_id, key, self._job_id, keys)
        except Exception:
            log.warning("job %s: could not publish training %s", self._job_id, key, exc_info=True)
            return
        if not stored:
            log.info("job %s: training %s is already published", self._job_id, key)

    def _fetch(self, key: str, owner: str, files: object) -> dict[str, Path] | None:
        if not _plain_name(owner) or not isinstance(files, dict) or not files:
            return None
        target = self._publisher.folder / REUSE_FOLDER / key
        shutil.rmtree(target, ignore_errors=True)
        paths: dict[str, Path] = {}
        for index, (name, stored) in enumerate(files.items()):
            if not isinstance(name, str) or not isinstance(stored, str):
                return None
            try:
                check_key(stored)
            except InvalidKeyError:
                return None
            if not stored.startswith(f"{owner}/"):
                return None
            path = target / str(index)
            if not self._publisher.store.get_file(stored, path):
                return None
            paths[name] = path
        return paths

    def _keys(self, files: Mapping[str, Path]) -> dict[str, str] | None:
        if not _plain_name(self._job_id):
            log.warning("job %s: not publishing: the job id is not a folder name", self._job_id)
            return None
        if not files:
            log.warning("job %s: not publishing training without files", self._job_id)
            return None
        folder = self._publisher.folder.resolve()
        keys: dict[str, str] = {}
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
            keys[name] = self._publisher.key(path.relative_to(folder).as_posix())
        return keys

    def _forget(self, key: str, owner: str) -> None:
        """Free a key whose files are gone, so the next job to train it can publish it."""
        try:
            with self._sessions.begin() as session:
                forget_training(session, self._tenant_id, key, owner)
        except Exception:
            log.warning("job %s: could not forget training %s", self._job_id, key, exc_info=True)


def _plain_name(text: str) -> bool:
    """One plain path component (a job id), nothing a path could be made of."""
    try:
        return "/" not in check_key(text)
    except InvalidKeyError:
        return False


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` with every link resolved, if it is an existing regular file under ``folder``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    return real if real.is_relative_to(folder) and real.is_file() else None
