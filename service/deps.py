"""Request dependencies: a database session, the settings, and the calling tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.problems import ProblemError, not_found
from service.settings import Settings
from service.state import ServiceState, get_state
from store.db import reads_autocommit
from store.jobs import get_job
from store.tables import JobRow, Tenant
from store.tenants import tenant_for_api_key

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`lth_…`) as a Bearer token: `Authorization: Bearer lth_…`.",
)


#: Methods whose handlers only read: they get read sessions (no transaction on PostgreSQL).
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


async def _session(request: Request) -> AsyncIterator[Session]:
    # Closed when the endpoint returns, before a streamed body is sent: a session must never
    # hold a transaction (on SQLite: the write lock) for the length of a download or stream.
    # Opening one does no I/O (it connects at its first query). Closing one that may roll back
    # goes through the thread pool, shielded, so that a client gone mid-request cannot leave
    # the connection checked out; a read session on PostgreSQL has nothing to roll back.
    state = get_state(request)
    reads_only = request.method in READ_ONLY_METHODS
    session = (state.read_sessions if reads_only else state.sessions)()
    try:
        yield session
    finally:
        if reads_only and reads_autocommit(state.engine):
            session.close()
        else:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(session.close)


# Dependencies without I/O are ``async``: FastAPI runs a plain ``def`` one in the thread pool,
# a trip that costs more than the lookup and waits for a thread when the API is busy.
async def _settings(request: Request) -> Settings:
    return get_state(request).settings


async def _state(request: Request) -> ServiceState:
    return get_state(request)


SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
StateDep = Annotated[ServiceState, Depends(_state)]


def _unauthorized(detail: str, error: str | None) -> ProblemError:
    challenge = 'Bearer realm="lth"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": challenge})


@dataclass(frozen=True)
class Caller:
    """Who calls, as far as is known without the database: the tenant itself when auth is
    off, else the key to look up. The lookup is :meth:`tenant`, in the thread pool; the polled
    routes make it in the same trip as their own query (each trip is a wait under load)."""

    known: Tenant | None
    key: str = ""

    def tenant(self, session: Session) -> Tenant:
        """The caller's tenant; 401 for a key that is unknown or revoked. Blocking I/O."""
        if self.known is not None:
            return self.known
        tenant = tenant_for_api_key(session, self.key)
        if tenant is None:
            raise _unauthorized("The API key is unknown or revoked.", "invalid_token")
        # End the lookup's transaction now: the handler may take long (an upload) before it
        # writes.
        session.commit()
        return tenant


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    state = get_state(request)
    if state.settings.auth == "disabled":
        if state.local_tenant is None:  # pragma: no cover - set at startup
            raise RuntimeError("auth is disabled but the local tenant was not created")
        return Caller(state.local_tenant)
    if credentials is None:
        raise _unauthorized("Send an API key as `Authorization: Bearer <key>`.", None)
    return Caller(None, credentials.credentials)


CallerDep = Annotated[Caller, Depends(_caller)]


async def _current_tenant(session: SessionDep, caller: CallerDep) -> Tenant:
    if caller.known is not None:
        return caller.known
    return await run_in_threadpool(caller.tenant, session)


CurrentTenant = Annotated[Tenant, Depends(_current_tenant)]


def owned_job(session: Session, tenant: Tenant, job_id: str) -> JobRow:
    """The tenant's job, or a 404 problem: another tenant's job is exactly like a missing one."""
    job = get_job(session, tenant.id, job_id)
    if job is None:
        raise not_found("job")
    return job
