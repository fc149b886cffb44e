"""Every store test runs against SQLite (a file) and PostgreSQL (a fresh schema)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas.spec import JobSpec
from store.db import make_engine, make_sessionmaker, migrate
from store.tables import Tenant
from store.tenants import ensure_tenant


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lth.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def tenant(sessions: sessionmaker[Session]) -> Tenant:
    with sessions.begin() as session:
        return ensure_tenant(session, "acme")


@pytest.fixture
def other_tenant(sessions: sessionmaker[Session]) -> Tenant:
    with sessions.begin() as session:
        return ensure_tenant(session, "globex")


SpecFactory = Callable[..., JobSpec]


@pytest.fixture
def make_spec() -> SpecFactory:
    """Build the minimal LeNet spec with top-level fields replaced."""

    def build(**overrides: object) -> JobSpec:
        body: dict[str, object] = {
            "model": {"arch": "lenet_300_100"},
            "dataset": {"uri": "idx:///usr/share/datasets/fashion-mnist"},
            "training": {"steps": "300it", "eval_every": "100it"},
            "pruning": {"rounds": 2},
        }
        body.update(overrides)
        return JobSpec.model_validate(body)

    return build


@pytest.fixture
def spec(make_spec: SpecFactory) -> JobSpec:
    return make_spec()
