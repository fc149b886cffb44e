"""The app factory: ``create_app(settings, enqueue=...)`` wires store, routes, errors, metrics.

``enqueue`` is required: submitting a job must reach real workers, and the worker package owns
how (Celery). Tests pass a function that records the ids.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from service.body_limit import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.openapi import install_openapi
from service.problems import install_problem_handlers
from service.query_params import refuse_unknown_query
from service.readiness import broker_check, database_check
from service.routes import artifacts, datasets, events, health, jobs, models
from service.routes import reports as report_routes
from service.settings import Settings
from service.state import Enqueue, ReadinessCheck, ServiceState, state_of
from store.artifact_store import LocalArtifactStore, open_artifact_store
from store.db import (
    API_PING_IDLE_AFTER_S,
    make_engine,
    make_read_sessionmaker,
    make_sessionmaker,
    migrate,
)
from store.events import round_durations as store_round_durations
from store.jobs import count_jobs_by_status
from store.tenants import ensure_tenant

log = logging.getLogger("service")

DESCRIPTION = """\
Lottery-ticket compression as a service: submit a pruning job (iterative magnitude pruning with
rewinding), follow its progress and events, and download the winning ticket.

Authenticate with `Authorization: Bearer <api key>`. Errors are `application/problem+json`
(RFC 9457). Lists are cursor-paginated: pass `next_cursor` back as `after`.
"""

TAGS = [
    {"name": "jobs", "description": "Submit, follow and cancel pruning jobs."},
    {"name": "events", "description": "What happened to a job, as pages or a live stream."},
    {"name": "artifacts", "description": "Files a job produced: tickets, masks, results."},
    {"name": "datasets", "description": "Your uploaded datasets."},
    {"name": "models", "description": "Architectures a job can prune."},
    {"name": "health", "description": "Probes and metrics for operators."},
]


def _startup(state: ServiceState) -> None:
    settings = state.settings
    folders = [settings.home, settings.upload_root]
    if isinstance(state.artifacts, LocalArtifactStore):  # a bucket needs no folder
        folders.append(state.artifacts.root)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    if settings.migrate_on_start:
        migrate(settings.database_url)
    if settings.auth == "disabled":
        with state.sessions.begin() as session:
            state.local_tenant = ensure_tenant(session, settings.local_tenant)
        log.warning(
            "!!! LTH_AUTH=disabled: authentication is OFF; every request acts as tenant %r. "
            "Never expose this server beyond your own machine. !!!",
            settings.local_tenant,
        )


def create_app(
    settings: Settings | None = None,
    *,
    enqueue: Enqueue,
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """Build the API.

    ``enqueue(job_id, device)`` is called after each new job is committed. ``readiness_checks`` are
    added to (or replace, by name) the default ``database`` and ``broker`` checks of /readyz.
    """
    settings = settings or Settings()
    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        ping_idle_after_s=API_PING_IDLE_AFTER_S,
    )
    sessions = make_sessionmaker(engine)

    def count_by_status() -> dict[str, int]:
        with sessions() as session:
            return count_jobs_by_status(session)

    def round_durations() -> list[float]:
        with sessions() as session:
            return store_round_durations(session)

    state = ServiceState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        read_sessions=make_read_sessionmaker(engine),
        artifacts=open_artifact_store(settings),
        enqueue=enqueue,
        metrics=Metrics(count_by_status, round_durations),
        readiness_checks={
            "database": database_check(engine),
            "broker": broker_check(settings.broker_url),
            **(readiness_checks or {}),
        },
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(_startup, state_of(app))
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="Lottery Ticket Service",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query)],
    )
    app.state.lth = state
    install_problem_handlers(app)
    for module in (jobs, events, artifacts, datasets, models, health):
        app.include_router(module.router)
    app.include_router(report_routes.router)
    # Inside the metrics middleware, so refused bodies are counted; uploads cap themselves.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        exempt_paths={app.url_path_for("upload_dataset"), app.url_path_for("upload_model")},
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    install_openapi(app)
    return app
