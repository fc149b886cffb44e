"""Reports the API draws itself, kept in a folder of its own: never in the artifact store.

A finished run's report is an artifact the worker publishes. When there is none yet (mid-run, a
run from before reports, a report older than its inputs), the API fetches the run's JSON from
the store into ``<home>/report-cache/<job_id>/<tag>/`` and draws it there (about a second of
matplotlib). ``tag`` hashes the store versions of the inputs, so a new ``rounds.json`` or a
manifest lands in a new folder and is drawn again, and the superseded folders are removed. A
folder appears complete or not at all: it is drawn under a hidden name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from api_schemas.run_layout import MANIFEST, REPORT_HTML, REPORT_PNG, ROUNDS, SPEC
from reports import write_report
from service.settings import Settings
from store.artifact_store import ArtifactStore, StoredObject

#: The run's files a report is drawn from (see reports.data.load_run).
REPORT_INPUTS = (ROUNDS, MANIFEST, SPEC)
#: A hidden drawing folder older than this was left by a process that died while drawing.
_ABANDONED_S = 600.0
_drawing = threading.Lock()  # one drawing at a time: a report costs a core for about a second


def cache_root(settings: Settings) -> Path:
    """Where this API keeps the reports it drew, one folder per job."""
    return settings.home / "report-cache"


def drop_cached(settings: Settings, job_id: str) -> None:
    """Forget the job's drawn reports (the job was deleted)."""
    shutil.rmtree(cache_root(settings) / job_id, ignore_errors=True)


def _tag(inputs: Mapping[str, StoredObject | None]) -> str:
    versions = {name: None if item is None else item.version for name, item in inputs.items()}
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:32]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (REPORT_HTML, REPORT_PNG))


def drawn_report(
    store: ArtifactStore, settings: Settings, job_id: str, inputs: Mapping[str, StoredObject | None]
) -> Path:
    """The folder holding ``report.html``/``report.png`` drawn from these versions of the
    inputs, drawn first when there is none. Raises :class:`reports.ReportError` when the run has
    no finished round."""
    folder = cache_root(settings) / job_id / _tag(inputs)
    if _complete(folder):
        return folder
    with _drawing:
        if not _complete(folder):
            _draw(store, inputs, folder)
    return folder


def _draw(store: ArtifactStore, inputs: Mapping[str, StoredObject | None], folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".draw-"))
    try:
        for name, item in inputs.items():
            if item is not None:
                store.get_file(item.key, scratch / name)  # gone since: drawn without it
        write_report(scratch)
        try:
            scratch.rename(folder)
        except OSError:  # another process drew the same versions first
            if not _complete(folder):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _prune(folder)


def _prune(current: Path) -> None:
    """Remove the job's superseded reports and abandoned drawings."""
    for sibling in current.parent.iterdir():
        if sibling == current:
            continue
        if sibling.name.startswith("."):
            try:
                if time.time() - sibling.stat().st_mtime < _ABANDONED_S:
                    continue  # another process is drawing there
            except FileNotFoundError:
                continue
        shutil.rmtree(sibling, ignore_errors=True)
