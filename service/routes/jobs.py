"""/v1/jobs: submit, list, get, cancel and delete pruning jobs; read their per-round results."""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter, ValidationError, WithJsonSchema

from api_schemas.examples import MINIMAL_SPEC
from api_schemas.jobs import TERMINAL_STATUSES, Job, JobList, JobStatus
from api_schemas.problem import FieldError
from api_schemas.results import RoundResult
from api_schemas.spec import LABEL_KEY_MAX_LENGTH, LABEL_VALUE_MAX_LENGTH, MAX_LABELS, JobSpec
from service.admission import check_spec
from service.artifact_files import read_rounds
from service.deps import CallerDep, CurrentTenant, SessionDep, StateDep, owned_job
from service.openapi import job_links, problems
from service.problems import ProblemError, not_found, validation_problem
from service.report_cache import drop_cached
from service.views import job_view
from store import jobs as job_store
from store.errors import IdempotencyConflictError, InvalidCursorError, TooManyActiveJobsError
from store.events import add_event
from store.retention import purge_job
from store.webhooks import notify_completion

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["jobs"])


_LABEL_KEY = rf"[A-Za-z0-9_.\-/]{{1,{LABEL_KEY_MAX_LENGTH}}}"
_LABEL_VALUE = rf"[^\u0000]{{0,{LABEL_VALUE_MAX_LENGTH}}}"
_LABEL_FILTER = re.compile(f"{_LABEL_KEY}:{_LABEL_VALUE}")
#: A `label` filter as the schema states it; the route checks it (for the message it gives).
LabelFilter = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": f"^{_LABEL_KEY}:{_LABEL_VALUE}$"})
]
_rounds_adapter = TypeAdapter(list[RoundResult])


def _enqueue(state: StateDep, job_id: str, device: str) -> None:
    """Hand the committed job to the workers. On failure the job stays queued (the reconciler
    re-enqueues stale queued jobs), so the client still gets its 202."""
    try:
        state.enqueue(job_id, device)
    except Exception as exc:
        log.exception("enqueue of %s failed; it stays queued for the reconciler", job_id)
        message = f"could not reach the queue ({type(exc).__name__}); will retry"
        try:
            with state.sessions.begin() as session:
                add_event(session, job_id, "warning", {"message": message})
        except Exception:
            log.exception("recording the enqueue failure of %s failed too", job_id)


@router.post(
    "/jobs",
    status_code=202,
    name="create_job",
    summary="Submit a pruning job",
    response_description="Accepted; poll `urls.self` or stream `urls.events`.",
    responses={202: {"links": job_links()}, **problems(400, 401, 409, 413, 422, 429)},
)
def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    state: StateDep,
    spec: Annotated[
        JobSpec,
        Body(
            openapi_examples={
                "minimal": {
                    "summary": "LeNet-300-100 on Fashion-MNIST, 2 rounds",
                    "value": MINIMAL_SPEC,
                }
            }
        ),
    ],
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Repeat a request safely: the same key and body return the first job; "
            "the same key with another body is a 409.",
        ),
    ] = None,
) -> Job:
    errors = check_spec(spec, tenant, session, state.settings)
    if errors:
        raise validation_problem(errors)
    try:
        created = job_store.create_job(
            session,
            tenant.id,
            spec,
            idempotency_key=idempotency_key,
            max_active=state.settings.max_concurrent_jobs_per_tenant,
        )
    except IdempotencyConflictError as exc:
        raise ProblemError(
            409,
            "This Idempotency-Key was already used with a different request body.",
            kind="idempotency-key-reused",
        ) from exc
    except TooManyActiveJobsError as exc:
        raise ProblemError(
            429,
            f"You have {exc.active} queued or running jobs; the limit is {exc.limit}. "
            "Wait for one to finish or cancel one.",
            kind="too-many-active-jobs",
            # A hint, not a promise: jobs take minutes, so polling faster only adds load.
            headers={"Retry-After": "30"},
            limit=exc.limit,
        ) from exc
    session.commit()
    job = created.job
    if created.created:
        _enqueue(state, job.id, spec.training.device)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
    return job_view(job, request)


def _label_error(msg: str) -> ProblemError:
    return validation_problem([FieldError(loc="query.label", msg=msg, type="value_error")])


def _parse_labels(labels: list[str]) -> dict[str, str]:
    """``key:value`` filters, checked before any reaches the query: a key as labels have, a
    value no longer than a label's and free of NUL characters."""
    if len(labels) > MAX_LABELS:
        raise _label_error(f"at most {MAX_LABELS} label filters (jobs have at most as many labels)")
    parsed: dict[str, str] = {}
    for item in labels:
        if not _LABEL_FILTER.fullmatch(item):
            raise _label_error(
                f"{item!r} is not key:value with a key of 1 to {LABEL_KEY_MAX_LENGTH} letters, "
                f"digits and _.-/ and a value of at most {LABEL_VALUE_MAX_LENGTH} characters "
                "without NUL"
            )
        key, _, value = item.partition(":")
        parsed[key] = value
    return parsed


# The two polled routes are ``async`` with one trip through the thread pool, for the key lookup
# and the query together: a plain ``def`` handler makes a second one (FastAPI checks its return
# value in the pool too), and under load every trip is a wait for the GIL behind other requests.
@router.get(
    "/jobs", name="list_jobs", summary="List your jobs, newest first", responses=problems(401, 422)
)
async def list_jobs(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    after: Annotated[
        str | None, Query(description="`next_cursor` of the previous page.", max_length=500)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    status: Annotated[list[JobStatus] | None, Query(description="Only these statuses.")] = None,
    label: Annotated[
        list[LabelFilter] | None, Query(description="`key:value`; repeat to require several.")
    ] = None,
) -> JobList:
    labels = _parse_labels(label or [])
    try:
        page = await run_in_threadpool(
            lambda: job_store.list_jobs(
                session,
                caller.tenant(session).id,
                after=after,
                limit=limit,
                statuses=status or (),
                labels=labels,
            )
        )
    except InvalidCursorError as exc:
        raise validation_problem(
            [FieldError(loc="query.after", msg=str(exc), type="invalid_cursor")]
        ) from exc
    return JobList(
        data=[job_view(job, request) for job in page.jobs],
        next_cursor=page.next_cursor,
        has_more=page.has_more,
    )


@router.get("/jobs/{job_id}", name="get_job", summary="Get a job", responses=problems(401, 404))
async def get_job(request: Request, job_id: str, session: SessionDep, caller: CallerDep) -> Job:
    job = await run_in_threadpool(lambda: owned_job(session, caller.tenant(session), job_id))
    return job_view(job, request)


@router.post(
    "/jobs/{job_id}/cancel",
    name="cancel_job",
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one gets `cancel_requested` and "
    "its worker stops at the next heartbeat. A finished job answers 409.",
    responses=problems(401, 404, 409),
)
def cancel_job(
    request: Request,
    job_id: str,
    session: SessionDep,
    tenant: CurrentTenant,
    state: StateDep,
    background: BackgroundTasks,
) -> Job:
    outcome = job_store.request_cancel(session, tenant.id, job_id)
    if outcome is None:
        raise not_found("job")
    session.commit()
    if outcome.outcome == "cancelled":  # never reached a worker: the API sends its webhook
        background.add_task(notify_completion, state.sessions, job_id, state.settings)
    if outcome.outcome == "terminal":
        raise ProblemError(
            409, f"The job already finished ({outcome.job.status}).", kind="job-finished"
        )
    return job_view(outcome.job, request)


@router.get(
    "/jobs/{job_id}/rounds",
    name="get_rounds",
    summary="Per-round results so far",
    description="One entry per finished round (round 0 is the dense network); empty until the "
    "first round ends.",
    responses=problems(401, 404),
)
def get_rounds(
    job_id: str, session: SessionDep, tenant: CurrentTenant, state: StateDep
) -> list[RoundResult]:
    job = owned_job(session, tenant, job_id)
    session.close()
    try:
        return _rounds_adapter.validate_python(read_rounds(state.artifacts, job.id))
    except (ValueError, ValidationError) as exc:
        log.exception("rounds.json of %s is unreadable", job.id)
        raise ProblemError(
            500, "The job's round results are unreadable.", kind="corrupt-artifact"
        ) from exc


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    name="delete_job",
    summary="Delete a finished job",
    description="Removes a succeeded, failed or cancelled job for good: its artifacts, events and "
    "the trainings other jobs could have reused. A queued or running job answers 409: cancel it "
    "first, and delete it once it has stopped.",
    response_class=Response,
    responses=problems(401, 404, 409),
)
def delete_job(
    job_id: str, session: SessionDep, tenant: CurrentTenant, state: StateDep
) -> Response:
    job = owned_job(session, tenant, job_id)
    session.close()
    if job.status not in TERMINAL_STATUSES:
        raise ProblemError(
            409,
            f"The job is {job.status}; cancel it first, then delete it once it has stopped.",
            kind="job-active",
        )
    if not purge_job(state.sessions, state.artifacts, job.id):  # deleted meanwhile
        raise not_found("job")
    drop_cached(state.settings, job.id)
    return Response(status_code=204)
