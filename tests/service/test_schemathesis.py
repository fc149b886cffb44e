"""Schemathesis over the app's own OpenAPI document, the app on PostgreSQL, over real HTTP.

Every operation gets the document's examples, coverage cases (boundaries and values just past
them) and fuzzed inputs, valid and invalid, with hostile strings (NUL characters, cursors that
hold one or an impossible time) mixed into string inputs; then a stateful run follows the
document's links from a created job to the operations on it. Every check applies: no 5xx,
documented status codes, content types, headers and response bodies. The seed is fixed, so a
run is repeatable. Schemathesis replaces control characters in path parameters, so NULs in ids
are test_hostile_values.py's part.
"""

from __future__ import annotations

import base64
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from api_schemas.examples import MINIMAL_SPEC
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import LiveService, ServiceFactory

#: Examples per operation and scenarios of the stateful run: enough for every input's shapes,
#: while the module stays under a minute on two cores (300 and 100 found nothing more).
MAX_EXAMPLES = 50
STATEFUL_SCENARIOS = 30
STATEFUL_STEPS = 6
SEED = 20240601


def _cursor(created_at: str, job_id: str) -> str:
    raw = json.dumps([created_at, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Drawn now and then for string inputs: what once reached PostgreSQL and failed there.
HOSTILE_STRINGS = ["\x00", "a\x00b", "job_\x00", "ds_\x00"]
HOSTILE_CURSORS = [
    _cursor("2024-01-01T00:00:00+00:00", "job_\x00"),
    _cursor("0001-01-01T00:00:00+01:00", "job_" + "0" * 26),
    _cursor("2024-01-01T00:00:00", "job_" + "0" * 26),
]
HOSTILE_LABEL_FILTERS = ["key:\x00", "k\x00:v", "key:" + "v" * 201]
#: A schema-valid input can still be refused by rules no JSON Schema states: a job's spec is
#: checked against the tenant's datasets and the data roots, an upload's file is read, and a
#: cursor must be one the server handed out. There, the check that such input is accepted is off.
SEMANTIC_INPUTS = [
    {
        "include-path": path,
        "include-method": method,
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }
    for path, method in (("/v1/jobs", "POST"), ("/v1/jobs", "GET"), ("/v1/datasets", "POST"))
]
CONFIG: dict[str, Any] = {
    "seed": SEED,
    "dictionaries": {
        "hostile": {"values": HOSTILE_STRINGS},
        "cursors": {"values": HOSTILE_CURSORS},
        "label-filters": {"values": HOSTILE_LABEL_FILTERS},
    },
    "parameters": {
        "query.after": {"dictionary": "cursors", "probability": 0.3},
        "query.label": {"dictionary": "label-filters", "probability": 0.3},
    },
    "generation": {
        "mode": "all",
        "allow-x00": True,
        "deterministic": True,
        "dictionaries": {"string": {"dictionary": "hostile", "probability": 0.2}},
    },
    "checks": {"enabled": True},
    "operations": SEMANTIC_INPUTS,
}


def _openapi() -> dict[str, Any]:
    """The document the app serves; building the app opens no database and starts nothing."""
    home = Path(tempfile.gettempdir()) / "lth-openapi"
    app = create_app(Settings(home=home, database_url="sqlite://"), enqueue=lambda *_: None)
    return app.openapi()


SCHEMA = schemathesis.openapi.from_dict(_openapi(), config=schemathesis.Config.from_dict(CONFIG))
#: Headers that frame the request on the wire: a made-up value is refused by the HTTP server
#: (uvicorn, a plain-text 400) before the app sees the request.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if headers is None:
        return None
    return {name: value for name, value in headers.items() if name.lower() not in FRAMING_HEADERS}


SCHEMA.hook(map_headers)


@pytest.fixture(scope="module")
def postgres_schema_url(postgres_server_url: str) -> Iterator[str]:
    """One PostgreSQL schema for the module's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_server_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    try:
        yield f"{postgres_server_url}{separator}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def pg_live(service_factory: ServiceFactory, postgres_schema_url: str) -> Iterator[LiveService]:
    live = service_factory(database_url=postgres_schema_url)
    yield live
    live.stop()  # before the PostgreSQL schema is dropped


@pytest.fixture(scope="module")
def api_key(pg_live: LiveService) -> str:
    """The test tenant's key."""
    return pg_live.new_key()


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
def test_no_operation_fails_any_check(
    case: schemathesis.Case, pg_live: LiveService, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    case.call_and_validate(base_url=pg_live.url, headers=auth, timeout=30)


def test_links_from_a_created_job_hold(pg_live: LiveService) -> None:
    config = schemathesis.Config.from_dict({**CONFIG, "base-url": pg_live.url})
    schema = schemathesis.openapi.from_url(f"{pg_live.url}/openapi.json", config=config)
    calls: list[tuple[str, int]] = []
    schema.hook(map_headers)

    @schema.hook
    def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
        """Mix the documented example in: a random spec names no data this server has, and a
        job must be created for its links to lead anywhere."""
        if context.operation is None or context.operation.label != "POST /v1/jobs":
            return strategy
        return st.one_of(st.just(MINIMAL_SPEC), strategy)

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        """Each scenario acts as a tenant of its own, so that none depends on what an earlier
        one left behind (active jobs against the cap, used idempotency keys): Hypothesis
        requires a scenario to behave the same when it is run again."""

        def setup(self) -> None:
            self.auth = {"Authorization": f"Bearer {pg_live.new_key()}"}

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": self.auth, "timeout": 30}

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            calls.append((case.operation.label, response.status_code))

    Machine.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
    )
    # The run created jobs, so its steps could follow the links (which steps a scenario takes
    # is Hypothesis's choice; that every link leads somewhere is the next test's part).
    assert ("POST /v1/jobs", 202) in calls, calls


def test_every_link_of_a_created_job_leads_to_its_operation(pg_live: LiveService) -> None:
    """Each link the document gives for POST /v1/jobs' 202, resolved as a client would (its
    ``operationRef`` and ``$response.body#/id``), reaches its operation for the job just
    created. A tenant of its own: the fuzzed runs leave jobs against the active-job cap."""
    auth = {"Authorization": f"Bearer {pg_live.new_key()}"}
    with httpx.Client(base_url=pg_live.url, headers=auth, timeout=30) as http:
        document = http.get("/openapi.json").json()
        links = document["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
        created = http.post("/v1/jobs", json=MINIMAL_SPEC)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert links
        for name, link in links.items():
            assert link["parameters"] == {"job_id": "$response.body#/id"}, name
            pointer = link["operationRef"].removeprefix("#/paths/")
            template, method = unquote(pointer).rsplit("/", 1)
            path = template.replace("~1", "/").replace("~0", "~")
            operation = document["paths"][path][method]
            response = http.request(method.upper(), path.replace("{job_id}", job_id))
            # A queued job has no report yet and may have no artifacts: whatever the operation
            # answers must be one of its documented responses, about this job.
            assert str(response.status_code) in operation["responses"], (name, response.text)
            assert response.status_code < 500, (name, response.text)
            if name == "GetJob":
                assert response.status_code == 200
                assert response.json()["id"] == job_id
