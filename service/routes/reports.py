"""/v1/jobs/{id}/report: the job's visual report (self-contained HTML, and its summary PNG).

A finished run's ``report.html``/``report.png`` are artifacts the worker publishes; they are
served from the store while they are not older than ``rounds.json`` and ``manifest.json``.
Otherwise (mid-run, a run from before reports, a stale report) the report is drawn from the
run's JSON into the API's own cache (:mod:`service.report_cache`), never into the store, so a
draft never becomes an artifact.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter
from starlette.responses import Response

from api_schemas.run_layout import MANIFEST, REPORT_STEM, ROUNDS
from reports import ReportError
from service.artifact_files import artifact_key
from service.deps import CurrentTenant, SessionDep, StateDep, owned_job
from service.openapi import problems
from service.problems import ProblemError
from service.report_cache import REPORT_INPUTS, drawn_report
from service.state import ServiceState
from store.artifact_store import StoredObject

router = APIRouter(prefix="/v1", tags=["artifacts"])

#: The page needs nothing but its own inline CSS and data: images.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _no_report() -> ProblemError:
    return ProblemError(
        404, "No report yet: the job has not finished its first round.", kind="no-report-yet"
    )


def _published(
    state: ServiceState, job_id: str, suffix: str, inputs: Mapping[str, StoredObject | None]
) -> bytes | None:
    """The worker's report file, if it is at least as new as the run's rounds and manifest."""
    report = state.artifacts.stat(artifact_key(job_id, f"{REPORT_STEM}{suffix}"))
    if report is None:
        return None
    sources = [inputs[name] for name in (ROUNDS, MANIFEST)]
    if any(item is not None and item.modified > report.modified for item in sources):
        return None
    return state.artifacts.read_bytes(report.key)


def _report(state: ServiceState, job_id: str, suffix: str) -> bytes:
    """The up-to-date report file (``.html`` or ``.png``): published, or drawn here."""
    store = state.artifacts
    inputs = {name: store.stat(artifact_key(job_id, name)) for name in REPORT_INPUTS}
    published = _published(state, job_id, suffix, inputs)
    if published is not None:
        return published
    if inputs[ROUNDS] is None:
        raise _no_report()
    try:
        try:
            return _drawn(state, job_id, suffix, inputs)
        except FileNotFoundError:  # superseded and removed by a newer drawing meanwhile
            return _drawn(state, job_id, suffix, inputs)
    except ReportError:
        raise _no_report() from None


def _drawn(
    state: ServiceState, job_id: str, suffix: str, inputs: Mapping[str, StoredObject | None]
) -> bytes:
    folder = drawn_report(state.artifacts, state.settings, job_id, inputs)
    # Read whole (a few hundred KB): a folder is complete once it has its name.
    return (folder / f"{REPORT_STEM}{suffix}").read_bytes()


def _serve(
    tenant: CurrentTenant, state: StateDep, session: SessionDep, job_id: str, suffix: str
) -> Response:
    job = owned_job(session, tenant, job_id)
    session.close()
    body = _report(state, job.id, suffix)
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
