"""Cursor bookkeeping for iterating over every page of jobs or events.

The sync and async iterators only fetch; when to stop and which cursor to send next is decided
here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from api_schemas.jobs import Event, EventList, Job, JobList
from client.sdk import calls
from client.sdk.calls import Call

#: The largest page the service serves.
MAX_JOB_PAGE = 100
MAX_EVENT_PAGE = 1000


class JobPages:
    """Walks ``GET /v1/jobs`` pages until the last one, or until ``limit`` jobs were seen."""

    def __init__(
        self,
        status: str | Iterable[str] | None,
        label: Mapping[str, str] | None,
        limit: int | None,
        page_size: int,
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.status = [status] if isinstance(status, str) else list(status or [])
        self.label = dict(label or {})
        self.remaining = limit
        self.page_size = max(1, min(page_size, MAX_JOB_PAGE))
        self.after: str | None = None
        self.finished = limit == 0

    def next_call(self) -> Call[JobList] | None:
        """The next page to fetch; None when done."""
        if self.finished:
            return None
        size = self.page_size if self.remaining is None else min(self.page_size, self.remaining)
        return calls.list_jobs(status=self.status, label=self.label, limit=size, after=self.after)

    def take(self, page: JobList) -> list[Job]:
        """The jobs of ``page`` to hand out; advances the cursor."""
        jobs = page.data if self.remaining is None else page.data[: self.remaining]
        if self.remaining is not None:
            self.remaining -= len(jobs)
        self.after = page.next_cursor
        self.finished = not page.has_more or page.next_cursor is None or self.remaining == 0
        return jobs


class EventPages:
    """Walks the JSON pages of a job's events, oldest first, until none are left."""

    def __init__(self, job_id: str, after: int | None) -> None:
        self.job_id = job_id
        self.after = after
        self.finished = False

    def next_call(self) -> Call[EventList] | None:
        """The next page to fetch; None when done."""
        if self.finished:
            return None
        return calls.events(self.job_id, after=self.after, limit=MAX_EVENT_PAGE)

    def take(self, page: EventList) -> list[Event]:
        """The events of ``page``; advances the cursor."""
        if page.next_cursor is not None:
            self.after = page.next_cursor
        self.finished = not page.has_more or not page.data
        return page.data
