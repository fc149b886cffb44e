"""/v1/jobs/{id}/events: the job's event log, as JSON pages or as a Server-Sent Events stream.

The stream polls the events table (the store is the source of truth, so any API replica can
serve any job) and ends once the job is final and every event has been sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.jobs import TERMINAL_STATUSES, EventList
from service.deps import CurrentTenant, SessionDep, StateDep, owned_job
from service.openapi import problems
from service.views import event_view
from store.events import list_events
from store.jobs import load_job

router = APIRouter(prefix="/v1", tags=["events"])

SSE_MEDIA_TYPE = "text/event-stream"
SSE_BATCH = 200
KEEPALIVE_SECONDS = 15.0

_SSE_DOC = (
    "With `Accept: text/event-stream` the response is a Server-Sent Events stream: each event "
    "as `id: <id>`, `event: <type>`, `data: <Event JSON>`. It resumes after `Last-Event-ID` (or "
    "`after`) and ends when the job is final and all its events were sent."
)


def _poll(
    sessions: sessionmaker[Session], job_id: str, after: int
) -> tuple[list[dict[str, Any]], str | None]:
    """New events and the job's status, in one short transaction. The status is read first:
    a final status is committed together with its last event, so the events read after it
    include that event."""
    with sessions.begin() as session:
        job = load_job(session, job_id)
        status = job.status if job is not None else None
        rows = list_events(session, job_id, after_id=after, limit=SSE_BATCH)
        return [event_view(row).model_dump(mode="json") for row in rows], status


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


async def _stream(
    sessions: sessionmaker[Session], job_id: str, after: int, interval: float
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet = 0.0
    while True:
        events, status = await anyio.to_thread.run_sync(_poll, sessions, job_id, after)
        for event in events:
            yield _frame(event)
            after = event["id"]
        if len(events) == SSE_BATCH:
            continue
        if status is None or status in TERMINAL_STATUSES:
            return
        if events:
            quiet = 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            yield b": keepalive\n\n"
            quiet = 0.0
        await anyio.sleep(interval)
        quiet += interval


@router.get(
    "/jobs/{job_id}/events",
    name="list_job_events",
    summary="A job's events (JSON pages or SSE)",
    description=_SSE_DOC,
    response_model=EventList,
    responses={
        200: {
            "content": {
                SSE_MEDIA_TYPE: {
                    "schema": {"type": "string"},
                    "example": 'id: 7\nevent: state\ndata: {"id":7,"type":"state",...}\n\n',
                }
            }
        },
        **problems(401, 404, 422),
    },
)
def list_job_events(
    request: Request,
    job_id: str,
    session: SessionDep,
    tenant: CurrentTenant,
    state: StateDep,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only events with a larger id.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (JSON only).")] = 100,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EventList | StreamingResponse:
    owned_job(session, tenant, job_id)
    if accept is not None and SSE_MEDIA_TYPE in accept:
        session.close()
        valid = last_event_id is not None and re.fullmatch(r"[0-9]{1,18}", last_event_id)
        start = int(last_event_id) if valid and last_event_id else after
        return StreamingResponse(
            _stream(state.read_sessions, job_id, start, state.settings.sse_poll_seconds),
            media_type=SSE_MEDIA_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows = list_events(session, job_id, after_id=after, limit=limit + 1)
    has_more = len(rows) > limit
    data = [event_view(row) for row in rows[:limit]]
    return EventList(data=data, next_cursor=data[-1].id if data else None, has_more=has_more)
