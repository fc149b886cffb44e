"""Where a tenant's uploads (datasets, models) are kept: the artifact store, one key each.

Both kinds take the same path: the multipart body is received into a temporary file on the
API's disk and validated there, then put into the store under ``uploads/<tenant>/<kind>/<id>``
before its row is committed, so a row never names a file the store lacks (a failed commit
removes the object again). Workers fetch uploads from the store by key and check the sha256.
Rows written before uploads went to the store hold an absolute path, removed as a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.orm import Session

from service.state import ServiceState
from service.uploads import ReceivedFile

log = logging.getLogger(__name__)

Row = TypeVar("Row")
View = TypeVar("View")
UploadKind = Literal["datasets", "models"]


def upload_key(tenant_id: str, kind: UploadKind, upload_id: str, suffix: str) -> str:
    return f"uploads/{tenant_id}/{kind}/{upload_id}.{suffix}"


def save_upload(
    state: ServiceState,
    upload: ReceivedFile,
    key: str,
    record: Callable[[Session, str], Row],
    view: Callable[[Row], View],
) -> View:
    """Put the validated upload at ``key``, then ``record`` its row (given the key) and return
    ``view`` of it; blocking, so run it in a thread."""
    state.artifacts.put_file(key, upload.path, sha256=upload.sha256)
    try:
        with state.sessions.begin() as session:
            return view(record(session, key))
    except BaseException:
        state.artifacts.delete(key)
        raise


def remove_upload(state: ServiceState, location: str, what: str) -> None:
    """Remove a deleted upload's file; a failure is logged (the row is already gone)."""
    try:
        if Path(location).is_absolute():
            Path(location).unlink(missing_ok=True)
        else:
            state.artifacts.delete(location)
    except Exception:
        log.exception("could not remove the file of deleted %s", what)
