"""Every API operation as data: the request to send and how to read its answer.

Both clients execute these :class:`Call` objects, so a URL, a header or a response type is
written once, and the sync and async clients cannot drift apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from api_schemas import run_layout
from api_schemas.jobs import (
    ArtifactList,
    Dataset,
    DatasetList,
    EventList,
    Job,
    JobList,
    ModelList,
)
from api_schemas.results import RoundResult
from api_schemas.spec import JobSpec
from client.sdk.errors import UnexpectedResponse

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

SSE_MEDIA_TYPE = "text/event-stream"
_rounds = TypeAdapter(list[RoundResult])


@dataclass(frozen=True)
class Upload:
    """A file sent as the multipart part ``part`` (reopened for every attempt)."""

    path: Path
    part: str = "file"
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """What to send; ``idempotent`` says whether repeating it after it may have reached the
    server is harmless (see :mod:`client.sdk.retry`)."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: Upload | None = None
    idempotent: bool = True

    def with_headers(self, headers: Mapping[str, str]) -> Request:
        """The same request with ``headers`` added."""
        return Request(
            self.method,
            self.path,
            self.params,
            self.json,
            {**self.headers, **headers},
            self.upload,
            self.idempotent,
        )

    def open_upload(self) -> AbstractContextManager[BinaryIO | None]:
        """The upload's file, opened afresh for one attempt (nothing without an upload)."""
        return nullcontext() if self.upload is None else self.upload.path.open("rb")

    def build(
        self,
        http: httpx.Client | httpx.AsyncClient,
        file: BinaryIO | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        """The httpx request; ``file`` is the open upload, if any."""
        files = None
        data = None
        if self.upload is not None and file is not None:
            files = {self.upload.part: (self.upload.path.name, file, "application/octet-stream")}
            data = dict(self.upload.form)
        return http.build_request(
            self.method,
            self.path,
            params=list(self.params),
            json=self.json,
            headers=dict(self.headers),
            files=files,
            data=data,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request plus the parser of its successful response."""

    request: Request
    parse: Callable[[httpx.Response], T]


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UnexpectedResponse(
                f"{response.request.method} {response.request.url.path}: the answer is not a "
                f"valid {model.__name__}: {exc}"
            ) from exc

    return parse


def _rounds_of(response: httpx.Response) -> list[RoundResult]:
    try:
        return _rounds.validate_json(response.content)
    except ValidationError as exc:
        raise UnexpectedResponse(f"the rounds of the job are not valid: {exc}") from exc


def _nothing(_response: httpx.Response) -> None:
    return None


def _etag_of(response: httpx.Response) -> str | None:
    etag: str | None = response.headers.get("etag")
    return etag


def segment(value: str) -> str:
    """One path segment, escaped so an id can never change the route."""
    return quote(value, safe="")


def artifact_path(job_id: str, name: str) -> str:
    """The download path of an artifact; ``name`` may contain ``/`` but no ``..``."""
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{name!r} is not an artifact name")
    return f"/v1/jobs/{segment(job_id)}/artifacts/" + "/".join(segment(p) for p in parts)


# ---------------------------------------------------------------------------------------- jobs


def create_job(spec: JobSpec | Mapping[str, Any], idempotency_key: str | None) -> Call[Job]:
    """POST /v1/jobs. Always sends an Idempotency-Key (a fresh one unless given), which makes
    the request safe to retry: a repeat returns the first job instead of creating another."""
    body = (
        spec.model_dump(mode="json", exclude_unset=True)
        if isinstance(spec, JobSpec)
        else dict(spec)
    )
    key = idempotency_key or f"lth-{uuid.uuid4().hex}"
    request = Request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
    return Call(request, _model(Job))


def list_jobs(
    *,
    status: str | Iterable[str] | None = None,
    label: Mapping[str, str] | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> Call[JobList]:
    """GET /v1/jobs: one page, newest first."""
    statuses = [status] if isinstance(status, str) else list(status or [])
    params = [("status", s) for s in statuses]
    params += [("label", f"{key}:{value}") for key, value in (label or {}).items()]
    if limit is not None:
        params.append(("limit", str(limit)))
    if after is not None:
        params.append(("after", after))
    return Call(Request("GET", "/v1/jobs", params=tuple(params)), _model(JobList))


def get_job(job_id: str) -> Call[Job]:
    """GET /v1/jobs/{id}."""
    return Call(Request("GET", f"/v1/jobs/{segment(job_id)}"), _model(Job))


def cancel_job(job_id: str) -> Call[Job]:
    """POST /v1/jobs/{id}/cancel. Not repeated once sent: a second cancel of a job the first one
    already ended answers 409."""
    request = Request("POST", f"/v1/jobs/{segment(job_id)}/cancel", idempotent=False)
    return Call(request, _model(Job))


def rounds(job_id: str) -> Call[list[RoundResult]]:
    """GET /v1/jobs/{id}/rounds."""
    return Call(Request("GET", f"/v1/jobs/{segment(job_id)}/rounds"), _rounds_of)


def events(job_id: str, after: int | None = None, limit: int | None = None) -> Call[EventList]:
    """GET /v1/jobs/{id}/events as one JSON page."""
    params = []
    if after is not None:
        params.append(("after", str(after)))
    if limit is not None:
        params.append(("limit", str(limit)))
    request = Request("GET", f"/v1/jobs/{segment(job_id)}/events", params=tuple(params))
    return Call(request, _model(EventList))


def event_stream(job_id: str, last_event_id: int | None) -> Request:
    """GET /v1/jobs/{id}/events as Server-Sent Events, resuming after ``last_event_id``."""
    headers = {"Accept": SSE_MEDIA_TYPE, "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return Request("GET", f"/v1/jobs/{segment(job_id)}/events", headers=headers)


# ----------------------------------------------------------------------------------- artifacts


def list_artifacts(job_id: str) -> Call[ArtifactList]:
    """GET /v1/jobs/{id}/artifacts."""
    return Call(Request("GET", f"/v1/jobs/{segment(job_id)}/artifacts"), _model(ArtifactList))


def artifact_etag(job_id: str, name: str) -> Call[str | None]:
    """HEAD of an artifact: its current ETag, to make a resumed download conditional."""
    return Call(Request("HEAD", artifact_path(job_id, name)), _etag_of)


def download(job_id: str, name: str) -> Request:
    """GET of an artifact's bytes (the caller adds Range / If-Range). ``identity``: byte ranges
    must count the file's bytes, not those of a compressed encoding."""
    headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
    return Request("GET", artifact_path(job_id, name), headers=headers)


# ------------------------------------------------------------------------ datasets and models


def upload_dataset(path: Path, name: str | None = None) -> Call[Dataset]:
    """POST /v1/datasets (multipart). Not repeated once sent: it would store a second copy."""
    form = {"name": name} if name else {}
    request = Request("POST", "/v1/datasets", upload=Upload(path, form=form), idempotent=False)
    return Call(request, _model(Dataset))


def list_datasets() -> Call[DatasetList]:
    """GET /v1/datasets."""
    return Call(Request("GET", "/v1/datasets"), _model(DatasetList))


def get_dataset(dataset_id: str) -> Call[Dataset]:
    """GET /v1/datasets/{id}."""
    return Call(Request("GET", f"/v1/datasets/{segment(dataset_id)}"), _model(Dataset))


def delete_dataset(dataset_id: str) -> Call[None]:
    """DELETE /v1/datasets/{id}."""
    return Call(Request("DELETE", f"/v1/datasets/{segment(dataset_id)}"), _nothing)


def list_models() -> Call[ModelList]:
    """GET /v1/models."""
    return Call(Request("GET", "/v1/models"), _model(ModelList))


# ------------------------------------------------------------------------------------- reports

REPORT_FILES = {run_layout.REPORT_HTML: "/report", run_layout.REPORT_PNG: "/report.png"}


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def report(job_id: str, name: str) -> Call[bytes]:
    """GET /v1/jobs/{id}/report (``report.html``) or /report.png: drawn from the rounds so far."""
    return Call(Request("GET", f"/v1/jobs/{segment(job_id)}{REPORT_FILES[name]}"), _bytes)


def save_report(dest_dir: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    """Write the report files into ``dest_dir`` atomically; returns their paths by name."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    saved = {}
    for name, content in files.items():
        path = dest_dir / name
        partial = path.with_name(f".{name}.part")
        partial.write_bytes(content)
        partial.replace(path)
        saved[name] = path
    return saved
