"""The blocking client. Requests and parsing come from :mod:`client.sdk.calls`; retry, paging,
streaming and download decisions from their own modules; this class only performs the I/O."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from api_schemas.jobs import Artifact, Dataset, Event, EventList, Job, JobList, ModelInfo
from api_schemas.results import RoundResult
from api_schemas.spec import JobSpec
from client.sdk import calls, tickets
from client.sdk.calls import Call, Request
from client.sdk.config import DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT, ClientConfig
from client.sdk.download import PartialDownload, select_artifacts, target_in
from client.sdk.errors import ApiError, Unreachable, error_from_response
from client.sdk.paging import EventPages, JobPages
from client.sdk.retry import RetryPolicy
from client.sdk.sse import EventStream
from client.sdk.waiting import JobWatch, is_terminal

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch import nn

T = TypeVar("T")
EventHook = Callable[..., Any]


class Client:
    """Blocking client of the lth service.

    ``url`` and ``api_key`` default to ``LTH_URL`` (else ``http://127.0.0.1:8000``) and
    ``LTH_API_KEY``. Connection failures, 429 and 503 are retried ``retries`` times with
    exponential backoff; every other error raises an :class:`~client.sdk.errors.LthError`.
    ``transport`` and ``event_hooks`` are handed to httpx (tests, proxies, instrumentation).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.BaseTransport | None = None,
        event_hooks: Mapping[str, list[EventHook]] | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(
            url, api_key, timeout=timeout, retries=retries, backoff=backoff
        )
        self.policy = RetryPolicy(self.config.retries, self.config.backoff, self.config.max_backoff)
        self._http = httpx.Client(
            base_url=self.config.url,
            headers=self.config.headers(),
            timeout=self.config.timeout,
            transport=transport,
            # Downloads may answer 307 to a presigned object-store URL; httpx drops the API
            # key on the way to another origin.
            follow_redirects=True,
            event_hooks=dict(event_hooks or {}),
        )

    # ------------------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(
        self, request: Request, *, stream: bool = False, timeout: httpx.Timeout | None = None
    ) -> httpx.Response:
        """Send with retries; returns a 2xx response (still open when ``stream``)."""
        attempts = self.policy.attempts(request.idempotent)
        while True:
            try:
                with request.open_upload() as file:
                    response = self._http.send(
                        request.build(self._http, file, timeout), stream=stream
                    )
                if response.is_success:
                    return response
                response.read()
                response.close()
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise Unreachable(self.config.url, exc) from exc
                time.sleep(delay)
                continue
            delay = attempts.after_response(response)
            if delay is None:
                raise error_from_response(response)
            time.sleep(delay)

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._send(call.request))

    # ----------------------------------------------------------------------------------- jobs

    def create_job(
        self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None
    ) -> Job:
        """Submit a job. Without ``idempotency_key`` a fresh one is made, so retries of this
        call can never create two jobs; pass your own to make re-runs of a pipeline step
        return the job the first run created."""
        return self._call(calls.create_job(spec, idempotency_key))

    def list_jobs_page(
        self,
        status: str | Iterable[str] | None = None,
        label: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> JobList:
        """One page of jobs, newest first; pass its ``next_cursor`` as ``after`` for the next."""
        return self._call(calls.list_jobs(status=status, label=label, limit=limit, after=after))

    def list_jobs(
        self,
        status: str | Iterable[str] | None = None,
        label: Mapping[str, str] | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[Job]:
        """Every matching job (at most ``limit``), newest first, following the cursors."""
        pages = JobPages(status, label, limit, page_size)
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._call(call))

    def get_job(self, job_id: str) -> Job:
        """One job."""
        return self._call(calls.get_job(job_id))

    def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop (``cancel_requested``)."""
        return self._call(calls.cancel_job(job_id))

    def rounds(self, job_id: str) -> list[RoundResult]:
        """The results of the rounds finished so far (round 0 is the dense network)."""
        return self._call(calls.rounds(job_id))

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[Job], object] | None = None,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job is final and return it; ``on_progress`` gets every changed
        snapshot (first one included). Raises :class:`WaitTimeout` after ``timeout`` s."""
        watch = JobWatch(poll_interval, timeout)
        while True:
            job = self.get_job(job_id)
            if watch.changed(job) and on_progress is not None:
                on_progress(job)
            if is_terminal(job):
                return job
            time.sleep(watch.sleep_before_next(job))

    # --------------------------------------------------------------------------------- events

    def events(self, job_id: str, after: int | None = None, limit: int | None = None) -> EventList:
        """One page of the job's events, oldest first, after event id ``after``."""
        return self._call(calls.events(job_id, after, limit))

    def iter_events(self, job_id: str, after: int | None = None) -> Iterator[Event]:
        """Every event written so far (after ``after``), across pages."""
        pages = EventPages(job_id, after)
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._call(call))

    def stream_events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """Events as they happen (SSE), until the job is final and all were delivered. A
        dropped connection is resumed with ``Last-Event-ID``; no event comes twice."""
        stream = EventStream(self.policy, last_event_id)
        timeout = self.config.stream_timeout()
        while True:
            try:
                request = calls.event_stream(job_id, stream.last_event_id)
                with closing(self._send(request, stream=True, timeout=timeout)) as response:
                    stream.connected()
                    for line in response.iter_lines():
                        if (event := stream.feed(line)) is not None:
                            yield event
                if is_terminal(self.get_job(job_id)):
                    # The stream ends once the job is final; collect anything a proxy cut off.
                    yield from self.iter_events(job_id, stream.last_event_id)
                    return
                error: BaseException = EOFError("the event stream ended early")
            except httpx.TransportError as exc:
                error = exc
            delay = stream.reconnect_delay()
            if delay is None:
                raise Unreachable(self.config.url, error) from error
            time.sleep(delay)

    # ------------------------------------------------------------------------------ artifacts

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        """The job's files with their sizes and sha256."""
        return self._call(calls.list_artifacts(job_id)).data

    def download_artifact(
        self, job_id: str, name: str, dest: Path, sha256: str | None = None
    ) -> Path:
        """Download artifact ``name`` to ``dest`` and return ``dest``.

        Streams into ``dest.part``, resumes a partial ``.part`` (or a dropped connection) with
        ``Range``/``If-Range``, checks the sha256 (``sha256`` if given, else the ETag) and only
        then renames onto ``dest``. A ``dest`` that already has ``sha256`` is not fetched."""
        part = PartialDownload(Path(dest), name, sha256)
        if (done := part.from_disk()) is not None:
            return done
        if part.needs_etag():
            part.etag = self._call(calls.artifact_etag(job_id, name))
        attempts = self.policy.attempts(idempotent=True)
        while True:
            request = calls.download(job_id, name).with_headers(part.request_headers())
            try:
                response = self._send(request, stream=True)
            except ApiError as exc:
                if exc.status == 416 and part.unsatisfiable():
                    continue
                raise
            try:
                part.begin(response)
                for chunk in response.iter_bytes():
                    part.write(chunk)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise Unreachable(self.config.url, exc) from exc
                time.sleep(delay)
                continue
            finally:
                response.close()
                part.close()
            if (path := part.finish()) is not None:
                return path

    def download_all(
        self, job_id: str, dest_dir: Path, names: Sequence[str] | None = None
    ) -> list[Path]:
        """Download the job's artifacts (all, or ``names``) under ``dest_dir``, keeping their
        relative paths; files already there with the right sha256 are skipped."""
        chosen = select_artifacts(job_id, self.list_artifacts(job_id), names)
        return [
            self.download_artifact(job_id, a.name, target_in(Path(dest_dir), a.name), a.sha256)
            for a in chosen
        ]

    # -------------------------------------------------------------------------------- tickets

    def load_ticket(
        self, job_id: str, dest: Path | None = None, *, into: nn.Module | None = None
    ) -> nn.Module:
        """The winning ticket as a module of the job's architecture: the weights at the rewind
        point with the mask applied (pruned weights exactly zero), bit for bit those of
        ``ticket.safetensors``. Downloads the compact ``ticket.sparse.safetensors`` (sha256
        checked) into ``dest`` (kept, and not fetched again while intact) or a temporary folder.
        For a job on your own uploaded model, pass an instance of it as ``into``: the weights
        are loaded into it by their state-dict names. Needs torch; a job that has not succeeded
        raises :class:`JobNotSucceeded`."""
        return self._load_module(job_id, tickets.TICKET_FILE, dest, into)

    def load_trained(
        self, job_id: str, dest: Path | None = None, *, into: nn.Module | None = None
    ) -> nn.Module:
        """The winning round's trained sparse model, like :meth:`load_ticket` (from
        ``trained.sparse.safetensors``)."""
        return self._load_module(job_id, tickets.TRAINED_FILE, dest, into)

    def masks(self, job_id: str, dest: Path | None = None) -> dict[str, npt.NDArray[Any]]:
        """The winning ticket's bool masks by state-dict name (``"fc1.weight"``), True where a
        weight survives, from the smaller of ``mask.safetensors`` and the compact ticket
        (sha256 checked). Needs numpy, not torch."""
        tickets.require_succeeded(self.get_job(job_id))
        source = tickets.mask_source(job_id, self.list_artifacts(job_id))
        with tickets.folder(dest) as where:
            target = target_in(where, source.name)
            path = self.download_artifact(job_id, source.name, target, source.sha256)
            return tickets.read_masks(path)

    def _load_module(
        self, job_id: str, name: str, dest: Path | None, into: nn.Module | None
    ) -> nn.Module:
        tickets.require_succeeded(self.get_job(job_id))
        with tickets.folder(dest) as where:
            manifest, sparse = self.download_all(job_id, where, names=[tickets.MANIFEST_FILE, name])
            return tickets.build_module(manifest, sparse, into)

    # ---------------------------------------------------------------------- datasets, models

    def upload_dataset(self, path: Path, name: str | None = None) -> Dataset:
        """Upload an .npz or .safetensors file (x_train, y_train, x_test, y_test); use the
        answer's ``uri`` as ``dataset.uri``."""
        return self._call(calls.upload_dataset(Path(path), name))

    def list_datasets(self) -> list[Dataset]:
        """Your datasets, newest first."""
        return self._call(calls.list_datasets()).data

    def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return self._call(calls.get_dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset (queued jobs using it will fail)."""
        self._call(calls.delete_dataset(dataset_id))

    def download_report(self, job_id: str, dest_dir: Path) -> dict[str, Path]:
        """Save the job's report (``report.html``, self-contained, and ``report.png``) into
        ``dest_dir``; mid-run it shows the rounds finished so far."""
        files = {name: self._call(calls.report(job_id, name)) for name in calls.REPORT_FILES}
        return calls.save_report(dest_dir, files)

    def list_models(self) -> list[ModelInfo]:
        """The built-in architectures ``model.arch`` accepts."""
        return self._call(calls.list_models()).data
