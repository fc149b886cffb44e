"""The asyncio client: the same operations as :class:`client.sdk.Client`, awaited.

Requests, parsing, retry, paging, streaming and download rules are the shared ones; only the
I/O (and sleeping) differs from the blocking client.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
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


class AsyncClient:
    """Asyncio client of the lth service; see :class:`client.sdk.Client` for the semantics.
    ``on_progress`` callbacks of :meth:`wait` may be plain functions or coroutines."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: Mapping[str, list[EventHook]] | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(
            url, api_key, timeout=timeout, retries=retries, backoff=backoff
        )
        self.policy = RetryPolicy(self.config.retries, self.config.backoff, self.config.max_backoff)
        self._http = httpx.AsyncClient(
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

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(
        self, request: Request, *, stream: bool = False, timeout: httpx.Timeout | None = None
    ) -> httpx.Response:
        """Send with retries; returns a 2xx response (still open when ``stream``)."""
        attempts = self.policy.attempts(request.idempotent)
        while True:
            try:
                with request.open_upload() as file:
                    response = await self._http.send(
                        request.build(self._http, file, timeout), stream=stream
                    )
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise Unreachable(self.config.url, exc) from exc
                await asyncio.sleep(delay)
                continue
            delay = attempts.after_response(response)
            if delay is None:
                raise error_from_response(response)
            await asyncio.sleep(delay)

    async def _call(self, call: Call[T]) -> T:
        return call.parse(await self._send(call.request))

    # ----------------------------------------------------------------------------------- jobs

    async def create_job(
        self, spec: JobSpec | Mapping[str, Any], idempotency_key: str | None = None
    ) -> Job:
        """Submit a job (always with an Idempotency-Key; see ``Client.create_job``)."""
        return await self._call(calls.create_job(spec, idempotency_key))

    async def list_jobs_page(
        self,
        status: str | Iterable[str] | None = None,
        label: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> JobList:
        """One page of jobs, newest first."""
        call = calls.list_jobs(status=status, label=label, limit=limit, after=after)
        return await self._call(call)

    async def list_jobs(
        self,
        status: str | Iterable[str] | None = None,
        label: Mapping[str, str] | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[Job]:
        """Every matching job (at most ``limit``), newest first, following the cursors."""
        pages = JobPages(status, label, limit, page_size)
        while (call := pages.next_call()) is not None:
            for job in pages.take(await self._call(call)):
                yield job

    async def get_job(self, job_id: str) -> Job:
        """One job."""
        return await self._call(calls.get_job(job_id))

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop."""
        return await self._call(calls.cancel_job(job_id))

    async def rounds(self, job_id: str) -> list[RoundResult]:
        """The results of the rounds finished so far."""
        return await self._call(calls.rounds(job_id))

    async def wait(
        self,
        job_id: str,
        on_progress: Callable[[Job], object] | None = None,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> Job:
        """Poll until the job is final and return it; ``on_progress`` gets every change."""
        watch = JobWatch(poll_interval, timeout)
        while True:
            job = await self.get_job(job_id)
            if watch.changed(job) and on_progress is not None:
                outcome = on_progress(job)
                if inspect.isawaitable(outcome):
                    await outcome
            if is_terminal(job):
                return job
            await asyncio.sleep(watch.sleep_before_next(job))

    # --------------------------------------------------------------------------------- events

    async def events(
        self, job_id: str, after: int | None = None, limit: int | None = None
    ) -> EventList:
        """One page of the job's events, oldest first."""
        return await self._call(calls.events(job_id, after, limit))

    async def iter_events(self, job_id: str, after: int | None = None) -> AsyncIterator[Event]:
        """Every event written so far, across pages."""
        pages = EventPages(job_id, after)
        while (call := pages.next_call()) is not None:
            for event in pages.take(await self._call(call)):
                yield event

    async def stream_events(
        self, job_id: str, last_event_id: int | None = None
    ) -> AsyncIterator[Event]:
        """Events as they happen (SSE), resumed with ``Last-Event-ID`` after a drop, until the
        job is final and every event was delivered."""
        stream = EventStream(self.policy, last_event_id)
        timeout = self.config.stream_timeout()
        while True:
            try:
                request = calls.event_stream(job_id, stream.last_event_id)
                response = await self._send(request, stream=True, timeout=timeout)
                try:
                    stream.connected()
                    async for line in response.aiter_lines():
                        if (event := stream.feed(line)) is not None:
                            yield event
                finally:
                    await response.aclose()
                if is_terminal(await self.get_job(job_id)):
                    async for event in self.iter_events(job_id, stream.last_event_id):
                        yield event
                    return
                error: BaseException = EOFError("the event stream ended early")
            except httpx.TransportError as exc:
                error = exc
            delay = stream.reconnect_delay()
            if delay is None:
                raise Unreachable(self.config.url, error) from error
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------ artifacts

    async def list_artifacts(self, job_id: str) -> list[Artifact]:
        """The job's files with their sizes and sha256."""
        return (await self._call(calls.list_artifacts(job_id))).data

    async def download_artifact(
        self, job_id: str, name: str, dest: Path, sha256: str | None = None
    ) -> Path:
        """Resumable, verified download of one artifact (see ``Client.download_artifact``)."""
        part = PartialDownload(Path(dest), name, sha256)
        if (done := part.from_disk()) is not None:
            return done
        if part.needs_etag():
            part.etag = await self._call(calls.artifact_etag(job_id, name))
        attempts = self.policy.attempts(idempotent=True)
        while True:
            request = calls.download(job_id, name).with_headers(part.request_headers())
            try:
                response = await self._send(request, stream=True)
            except ApiError as exc:
                if exc.status == 416 and part.unsatisfiable():
                    continue
                raise
            try:
                part.begin(response)
                async for chunk in response.aiter_bytes():
                    part.write(chunk)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise Unreachable(self.config.url, exc) from exc
                await asyncio.sleep(delay)
                continue
            finally:
                await response.aclose()
                part.close()
            if (path := part.finish()) is not None:
                return path

    async def download_all(
        self, job_id: str, dest_dir: Path, names: Sequence[str] | None = None
    ) -> list[Path]:
        """Download the job's artifacts (all, or ``names``) under ``dest_dir``."""
        chosen = select_artifacts(job_id, await self.list_artifacts(job_id), names)
        return [
            await self.download_artifact(
                job_id, a.name, target_in(Path(dest_dir), a.name), a.sha256
            )
            for a in chosen
        ]

    # -------------------------------------------------------------------------------- tickets

    async def load_ticket(
        self, job_id: str, dest: Path | None = None, *, into: nn.Module | None = None
    ) -> nn.Module:
        """The winning ticket as a module, its mask applied (see ``Client.load_ticket``)."""
        return await self._load_module(job_id, tickets.TICKET_FILE, dest, into)

    async def load_trained(
        self, job_id: str, dest: Path | None = None, *, into: nn.Module | None = None
    ) -> nn.Module:
        """The winning round's trained sparse model (see ``Client.load_trained``)."""
        return await self._load_module(job_id, tickets.TRAINED_FILE, dest, into)

    async def masks(self, job_id: str, dest: Path | None = None) -> dict[str, npt.NDArray[Any]]:
        """The winning ticket's bool masks by state-dict name (see ``Client.masks``)."""
        tickets.require_succeeded(await self.get_job(job_id))
        source = tickets.mask_source(job_id, await self.list_artifacts(job_id))
        with tickets.folder(dest) as where:
            target = target_in(where, source.name)
            path = await self.download_artifact(job_id, source.name, target, source.sha256)
            return tickets.read_masks(path)

    async def _load_module(
        self, job_id: str, name: str, dest: Path | None, into: nn.Module | None
    ) -> nn.Module:
        tickets.require_succeeded(await self.get_job(job_id))
        with tickets.folder(dest) as where:
            manifest, sparse = await self.download_all(
                job_id, where, names=[tickets.MANIFEST_FILE, name]
            )
            return tickets.build_module(manifest, sparse, into)

    # ---------------------------------------------------------------------- datasets, models

    async def upload_dataset(self, path: Path, name: str | None = None) -> Dataset:
        """Upload an .npz or .safetensors dataset."""
        return await self._call(calls.upload_dataset(Path(path), name))

    async def list_datasets(self) -> list[Dataset]:
        """Your datasets, newest first."""
        return (await self._call(calls.list_datasets())).data

    async def get_dataset(self, dataset_id: str) -> Dataset:
        """One dataset."""
        return await self._call(calls.get_dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset."""
        await self._call(calls.delete_dataset(dataset_id))

    async def download_report(self, job_id: str, dest_dir: Path) -> dict[str, Path]:
        """Save the job's report (``report.html`` and ``report.png``) into ``dest_dir``."""
        files = {name: await self._call(calls.report(job_id, name)) for name in calls.REPORT_FILES}
        return calls.save_report(dest_dir, files)

    async def list_models(self) -> list[ModelInfo]:
        """The built-in architectures."""
        return (await self._call(calls.list_models())).data
