"""What one app instance holds: settings, database, artifact store, the enqueue hook and readiness
checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp

from service.metrics import Metrics
from service.settings import Settings
from store.artifact_store import ArtifactStore
from store.tables import Tenant

#: Hands a committed job id to the workers (the worker package supplies the Celery one). It must
#: be safe to call twice for one job: claims are compare-and-set, duplicates do nothing.
Enqueue = Callable[[str, str], None]
#: A readiness probe: returns normally when healthy, raises with a short reason otherwise.
ReadinessCheck = Callable[[], None]


@dataclass
class ServiceState:
    """Typed application state, stored as ``app.state.lth``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    #: For requests that only read (GET, HEAD): see :func:`store.db.make_read_sessionmaker`.
    read_sessions: sessionmaker[Session]
    #: The one artifact store the routes read runs from (local folder or S3), built at startup.
    artifacts: ArtifactStore
    enqueue: Enqueue
    metrics: Metrics
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    local_tenant: Tenant | None = None


def get_state(connection: HTTPConnection) -> ServiceState:
    """The :class:`ServiceState` of the app serving ``connection``."""
    state: ServiceState = connection.app.state.lth
    return state


def state_of(app: ASGIApp) -> ServiceState:
    """The :class:`ServiceState` of an app built by :func:`service.app.create_app`."""
    state: ServiceState = app.state.lth  # type: ignore[attr-defined]
    return state
