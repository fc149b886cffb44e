"""/v1/jobs/{id}/report: the job's visual report (self-contained HTML, and its summary PNG).

The worker may not have written a report yet (mid-run, or a run from before reports existed):
it is then drawn here from ``rounds.json`` (about a second of matplotlib). A finished run's report
is cached as the ``report.html``/``report.png`` artifacts; a mid-run one is cached under hidden
names, which the artifact listing and the manifest skip, so a draft never becomes an artifact.
A cached file older than ``rounds.json`` or ``manifest.json`` is drawn again.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from api_schemas.run_layout import MANIFEST, REPORT_STEM, ROUNDS
from reports import ReportError, write_report
from service.deps import CurrentTenant, SessionDep, StateDep, owned_job
from service.openapi import problems
from service.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["artifacts"])

FINAL_STEM = REPORT_STEM
DRAFT_STEM = ".report-draft"
#: The page needs nothing but its own inline CSS and data: images.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_drawing = threading.Lock()  # one drawing at a time: a report costs a core for about a second


def _mtime(path: Path) -> float | None:
    """mtime of a regular file (not a symlink), None when there is none."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime if stat.S_ISREG(info.st_mode) else None


def _no_report() -> ProblemError:
    return ProblemError(
        404, "No report yet: the job has not finished its first round.", kind="no-report-yet"
    )


def _current_report(job_dir: Path, suffix: str) -> Path:
    """The up-to-date report file (``.html`` or ``.png``), drawn first when missing or stale."""
    stem = FINAL_STEM if _mtime(job_dir / MANIFEST) is not None else DRAFT_STEM
    wanted = [job_dir / f"{stem}{ext}" for ext in (".html", ".png")]
    sources = [t for t in (_mtime(job_dir / ROUNDS), _mtime(job_dir / MANIFEST)) if t is not None]

    def fresh() -> bool:
        times = [_mtime(path) for path in wanted]
        return all(t is not None and t >= max(sources, default=0.0) for t in times)

    if not fresh():
        if not sources:
            raise _no_report()
        with _drawing:
            if not fresh():
                _draw(job_dir, stem, max(sources))
    return job_dir / f"{stem}{suffix}"


def _draw(job_dir: Path, stem: str, drawn_from: float) -> None:
    try:
        written = write_report(job_dir, stem=stem)
    except ReportError:
        raise _no_report() from None
    # Date the files by the inputs they were drawn from: a round finishing during the drawing
    # leaves rounds.json newer than the report, so the next request draws it again.
    for path in written:
        os.utime(path, (drawn_from, drawn_from))
    if stem == FINAL_STEM:
        for ext in (".html", ".png"):
            (job_dir / f"{DRAFT_STEM}{ext}").unlink(missing_ok=True)


def _serve(
    tenant: CurrentTenant, state: StateDep, session: SessionDep, job_id: str, suffix: str
) -> Response:
    job = owned_job(session, tenant, job_id)
    session.close()
    path = _current_report(state.settings.artifact_root / job.id, suffix)
    # Read whole (a few hundred KB): a concurrent redraw renames a new file in, never truncates.
    body = path.read_bytes()
    media_type = "text/html; charset=utf-8" if suffix == ".html" else "image/png"
    headers = {"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
    if suffix == ".html":
        headers["Content-Security-Policy"] = REPORT_CSP
    return Response(body, media_type=media_type, headers=headers)


@router.get(
    "/jobs/{job_id}/report",
    name="get_report",
    summary="The job's visual report (HTML)",
    description="One self-contained HTML page (figures inline, no external requests): accuracy "
    "and early-stopping iteration versus weights remaining for the ticket and its controls, "
    "per-layer density, training curves, and the table of rounds. Available from the first "
    "finished round on; drawn on request when the worker has not written it yet.",
    response_class=Response,
    responses={
        200: {"content": {"text/html": {}}, "description": "The report page."},
        **problems(401, 404),
    },
)
def get_report(
    job_id: str, tenant: CurrentTenant, state: StateDep, session: SessionDep
) -> Response:
    return _serve(tenant, state, session, job_id, ".html")


@router.get(
    "/jobs/{job_id}/report.png",
    name="get_report_png",
    summary="The report's summary figure (PNG)",
    description="Test accuracy and early-stopping iteration versus percent of weights remaining "
    "(log axis), side by side: the figure of the HTML report, for READMEs and dashboards.",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The summary figure."},
        **problems(401, 404),
    },
)
def get_report_png(
    job_id: str, tenant: CurrentTenant, state: StateDep, session: SessionDep
) -> Response:
    return _serve(tenant, state, session, job_id, ".png")
