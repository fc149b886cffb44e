"""A job's run, trained in a local scratch folder, mirrored to the artifact store.

The engine reads and writes plain files; the store may be another host's disk or a bucket. So a
worker trains in ``<scratch>/<job_id>/`` and publishes what the engine has finished: every few
seconds while it runs (checkpoints, finished rounds), at once for a training another job may
reuse, and everything at the end. A job taken over on another host first fetches what the store
holds (:meth:`RunPublisher.fetch`), so it resumes from the last published checkpoint.

Consistency without locks: the engine writes every file atomically (temporary name, rename) and
only ever after the files it depends on. A periodic pass publishes only files last modified
before the pass began, all of which the walk is sure to see, so the store never holds a file
without the files written before it (a round's metrics without its weights). A worker that lost
its job publishes nothing more (``allowed``), so a frozen-and-thawed worker cannot overwrite
its successor's files. Once the final pass succeeded (or the folder was discarded) the publisher
is closed: a periodic pass still due from the heartbeat thread must not walk a folder being
removed and take the missing files for removals (a finished job's store copy emptied).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from store.artifact_store import ArtifactStore, file_sha256, is_hidden

#: How far file times may lag the clock: a few kernel ticks (1-4 ms each). Not more: a
#: checkpoint rewritten more often than this would never look old enough to publish.
_CLOCK_MARGIN_NS = 20_000_000


class RunPublisher:
    """Mirrors ``folder`` (one job's scratch folder) to ``<job_id>/`` in ``store``."""

    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        folder: Path,
        allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.folder = folder
        self.allowed = allowed
        self._published: dict[str, tuple[int, int]] = {}  # name → (size, mtime_ns) in the store
        self._lock = threading.Lock()
        self._closed = False  # the final pass is done, or the folder discarded

    def key(self, name: str) -> str:
        return f"{self.job_id}/{name}"

    def fetch(self) -> int:
        """Bring the store's copy of the run into the scratch folder: files this host lacks
        (another host's rounds and checkpoints). Returns how many were fetched."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fetched = 0
        prefix = f"{self.job_id}/"
        for item in self.store.list(prefix):
            name = item.key.removeprefix(prefix)
            path = self.folder / name
            if not path.exists() and self.store.get_file(item.key, path):
                fetched += 1
                info = path.stat()
                self._published[name] = (info.st_size, info.st_mtime_ns)
            # A file this host kept from an earlier attempt is published again by the next pass.
        return fetched

    def upload(self, paths: Iterable[Path]) -> None:
        """Publish these files of the folder now (a training another job may reuse)."""
        with self._lock:
            if self._closed:
                return
            for path in paths:
                name = path.resolve().relative_to(self.folder.resolve()).as_posix()
                self._put(name, path, os.lstat(path))

    def publish(self, *, final: bool = False) -> int:
        """Publish new and changed files, and remove from the store what the engine removed
        (a finished round's checkpoint). ``final``: the run is not changing any more, so every
        file goes, and the publisher closes once it went through. Returns how many objects
        changed (none once closed)."""
        with self._lock:
            if self._closed:
                return 0
            # File times come from a coarse clock that may lag this one by a tick: a file
            # written just after the pass began must not look older than it.
            started = time.time_ns() - _CLOCK_MARGIN_NS
            current = _walk(self.folder)
            changed = 0
            for name, (path, info) in sorted(current.items(), key=lambda kv: kv[1][1].st_mtime_ns):
                if not final and info.st_mtime_ns >= started:
                    continue  # still being written around now: the next pass takes it
                if self._published.get(name) != (info.st_size, info.st_mtime_ns):
                    if not self._put(name, path, info):
                        return changed
                    changed += 1
            for name in sorted(set(self._published) - set(current)):
                if not self.allowed():
                    return changed
                self.store.delete(self.key(name))
                del self._published[name]
                changed += 1
            self._closed = final
            return changed

    def _put(self, name: str, path: Path, info: os.stat_result) -> bool:
        if not self.allowed():
            return False
        self.store.put_file(self.key(name), path, sha256=file_sha256(path))
        self._published[name] = (info.st_size, info.st_mtime_ns)
        return True

    def discard(self) -> None:
        """Remove the scratch folder (the store has the run), and its parent once empty;
        nothing is published after."""
        with self._lock:
            self._closed = True
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()


def _walk(folder: Path) -> dict[str, tuple[Path, os.stat_result]]:
    """Regular, non-hidden files under ``folder`` by relative POSIX name."""
    files: dict[str, tuple[Path, os.stat_result]] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            path = Path(dirpath) / filename
            name = path.relative_to(folder).as_posix()
            if is_hidden(name):
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # replaced while walking: the next pass sees it
                continue
            if stat.S_ISREG(info.st_mode):
                files[name] = (path, info)
    return files
