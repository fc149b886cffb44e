"""Store rows → API models. Links are absolute, built from the request (proxy aware)."""

from __future__ import annotations

from fastapi import Request

from api_schemas.jobs import Dataset, Event, Job, JobError, JobResult, Progress
from api_schemas.spec import JobSpec
from store.datasets import dataset_uri
from store.tables import DatasetRow, EventRow, JobRow

#: The links of a job below its own URL (``/v1/jobs/{id}/<name>``); tests check each against
#: the route of that name.
JOB_SUBRESOURCES = ("cancel", "events", "artifacts", "rounds")


def job_urls(request: Request, job_id: str) -> dict[str, str]:
    """The links every job carries. One ``url_for`` (it walks the routes), the rest appended:
    a page of a hundred jobs would otherwise look its routes up five hundred times."""
    base = str(request.url_for("get_job", job_id=job_id))
    return {"self": base} | {name: f"{base}/{name}" for name in JOB_SUBRESOURCES}


def job_view(job: JobRow, request: Request) -> Job:
    """The API view of a job row."""
    error = None
    if job.error_code is not None:
        error = JobError(code=job.error_code, message=job.error_message or "")
    return Job(
        id=job.id,
        status=job.status,
        spec=JobSpec.model_validate(job.spec),
        spec_hash=job.spec_hash,
        name=job.name,
        labels=job.labels,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempt=job.attempt,
        progress=Progress.model_validate(job.progress) if job.progress else None,
        error=error,
        result=JobResult.model_validate(job.result) if job.result else None,
        cancel_requested=job.cancel_requested,
        urls=job_urls(request, job.id),
    )


def event_view(event: EventRow) -> Event:
    """The API view of an event row."""
    return Event(
        id=event.id,
        job_id=event.job_id,
        type=event.type,
        created_at=event.created_at,
        data=event.data,
    )


def dataset_view(row: DatasetRow) -> Dataset:
    """The API view of a dataset row."""
    meta = row.meta
    return Dataset(
        id=row.id,
        name=row.name,
        format=row.format,
        size=row.size,
        sha256=row.sha256,
        uri=dataset_uri(row.id),
        created_at=row.created_at,
        train_size=int(meta.get("train_size", 0)),
        test_size=int(meta.get("test_size", 0)),
        input_shape=[int(n) for n in meta.get("input_shape", [])],
        num_classes=meta.get("num_classes"),
    )
