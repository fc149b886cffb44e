"""Hostile values over real HTTP, on SQLite and on PostgreSQL: NUL characters in every kind of
string, non-finite numbers, oversized labels, malformed ids and cursors.

PostgreSQL refuses a NUL in text and ``Infinity``/``NaN`` in JSONB, so each of these once failed
in the database (a 500, and the connection dropped); SQLite stored them, for the clients to trip
over later. Each must be a 4xx problem naming the field, answered on a connection that stays
usable, with nothing stored.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api_schemas.jobs import Progress
from store import jobs as job_store
from tests.service.conftest import MINIMAL_SPEC, LiveService, ServiceFactory

ProblemCheck = Callable[..., dict[str, Any]]
INF, NAN = math.inf, math.nan
REAL_ID = "job_" + "0" * 26


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(
    request: pytest.FixtureRequest, service_factory: ServiceFactory
) -> Iterator[LiveService]:
    """One server per backend for the module; PostgreSQL's on a schema of its own."""
    if request.param == "sqlite":
        yield service_factory()
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in server_url else "?"
    live = service_factory(database_url=f"{server_url}{separator}options=-csearch_path%3D{schema}")
    try:
        yield live
    finally:
        live.stop()  # before the schema is dropped
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def client(backend: LiveService) -> Iterator[httpx.Client]:
    """One keep-alive connection's client for every case: a dropped connection shows."""
    with backend.tenant_client() as tenant:
        yield tenant


def _still_answers(client: httpx.Client) -> None:
    """The same client (the same connection, unless the server closed it) gets a normal answer,
    and the tenant has no job: nothing hostile was stored."""
    listed = client.get("/v1/jobs")
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []


def _spec_with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    *parents, last = path.split(".")
    target = spec
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return spec


def _post_spec(client: httpx.Client, spec: dict[str, Any]) -> httpx.Response:
    """POST the spec as Python's JSON writes it: ``Infinity`` and ``NaN`` included."""
    body = json.dumps(spec, allow_nan=True)
    return client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})


def _cursor(created_at: str, job_id: str) -> str:
    raw = json.dumps([created_at, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


NUL_FIELDS = [
    ("name", "a\x00b", "name"),
    ("model.arch", "lenet_300_100\x00", "model.arch"),
    ("model.weights", "/data/w\x00.safetensors", "model.weights"),
    ("dataset.uri", "idx:///data\x00", "dataset.uri"),
    ("pruning.exclude", ["fc\x00"], "pruning.exclude[0]"),
    ("webhook_url", "https://ci.example.com/\x00", "webhook_url"),
    ("labels", {"team": "a\x00"}, "labels.team"),
    ("labels", {"te\x00am": "a"}, "labels.te\x00am.[key]"),
]


@pytest.mark.parametrize(("path", "value", "loc"), NUL_FIELDS)
def test_nul_in_a_spec_string_is_a_field_error(
    client: httpx.Client, expect_problem: ProblemCheck, path: str, value: Any, loc: str
) -> None:
    body = expect_problem(_post_spec(client, _spec_with(path, value)), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(loc, "nul_character")]
    assert "NUL" in body["errors"][0]["msg"]
    _still_answers(client)


FLOAT_FIELDS = [
    "training.lr",
    "training.momentum",
    "training.weight_decay",
    "training.gamma",
    "pruning.rate",
    "pruning.rates.linear",
    "pruning.rates.conv",
    "pruning.rates.output",
    "pruning.target_density",
    "pruning.max_accuracy_drop",
    "pruning.finetune_lr",
    "pruning.ticket_tolerance",
]


@pytest.mark.parametrize("value", [INF, -INF, NAN], ids=["Infinity", "-Infinity", "NaN"])
@pytest.mark.parametrize("path", FLOAT_FIELDS)
def test_a_non_finite_number_is_a_field_error(
    client: httpx.Client, expect_problem: ProblemCheck, path: str, value: float
) -> None:
    body = expect_problem(_post_spec(client, _spec_with(path, value)), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(path, "finite_number")]
    _still_answers(client)


#: Labels at each cap, and the same with one too many (keys, characters of a key or a value).
LABEL_CAPS = {
    "count": (
        {f"k{i}": "v" for i in range(50)},
        {f"k{i}": "v" for i in range(51)},
        "labels",
        "too_long",
    ),
    "key": ({"k" * 100: "v"}, {"k" * 101: "v"}, f"labels.{'k' * 101}.[key]", "string_too_long"),
    "value": ({"team": "v" * 200}, {"team": "v" * 201}, "labels.team", "string_too_long"),
    "empty key": ({"t": "v"}, {"": "v"}, "labels..[key]", "string_too_short"),
}


@pytest.mark.parametrize("cap", LABEL_CAPS)
def test_labels_are_capped(
    client: httpx.Client, backend: LiveService, expect_problem: ProblemCheck, cap: str
) -> None:
    at_cap, past_cap, loc, kind = LABEL_CAPS[cap]
    body = expect_problem(_post_spec(client, _spec_with("labels", past_cap)), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(loc, kind)]
    _still_answers(client)
    with backend.tenant_client() as owner:
        created = _post_spec(owner, _spec_with("labels", at_cap))
        assert created.status_code == 202, created.text
        assert created.json()["labels"] == at_cap
        key, value = next(iter(at_cap.items()))
        found = owner.get("/v1/jobs", params={"label": f"{key}:{value}"}).json()["data"]
        assert [job["id"] for job in found] == [created.json()["id"]]


NUL_PATHS = [
    ("GET", "/v1/jobs/%00", "job"),
    ("GET", "/v1/jobs/job_%00", "job"),
    ("POST", "/v1/jobs/%00/cancel", "job"),
    ("GET", "/v1/jobs/%00/events", "job"),
    ("GET", "/v1/jobs/%00/artifacts", "job"),
    ("GET", "/v1/jobs/%00/artifacts/ticket.safetensors", "job"),
    ("GET", "/v1/jobs/%00/rounds", "job"),
    ("GET", "/v1/jobs/%00/report", "job"),
    ("GET", "/v1/jobs/%00/report.png", "job"),
    ("GET", "/v1/datasets/%00", "dataset"),
    ("GET", "/v1/datasets/ds_%00", "dataset"),
    ("DELETE", "/v1/datasets/%00", "dataset"),
]


@pytest.mark.parametrize(("method", "path", "what"), NUL_PATHS)
def test_a_malformed_id_in_the_path_is_not_found(
    client: httpx.Client, expect_problem: ProblemCheck, method: str, path: str, what: str
) -> None:
    body = expect_problem(client.request(method, path), 404)
    assert (body["type"], body["detail"]) == (
        "urn:lth:problem:not-found",
        f"No {what} with this id.",
    )
    _still_answers(client)


BAD_QUERIES = [
    ({"label": "team:\x00"}, "query.label", "value_error"),
    ({"label": "team:" + "v" * 201}, "query.label", "value_error"),
    ({"label": [f"k{i}:v" for i in range(51)]}, "query.label", "value_error"),
    ({"after": _cursor("2024-01-01T00:00:00+00:00", "job_\x00")}, "query.after", "invalid_cursor"),
    ({"after": _cursor("2024-01-01T00:00:00+00:00", "not-an-id")}, "query.after", "invalid_cursor"),
    ({"after": _cursor("0001-01-01T00:00:00+01:00", REAL_ID)}, "query.after", "invalid_cursor"),
]


@pytest.mark.parametrize(("params", "loc", "kind"), BAD_QUERIES)
def test_a_bad_filter_or_cursor_is_a_field_error(
    client: httpx.Client, expect_problem: ProblemCheck, params: Any, loc: str, kind: str
) -> None:
    body = expect_problem(client.get("/v1/jobs", params=params), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(loc, kind)]
    _still_answers(client)


def test_a_non_finite_metric_is_left_out_of_the_progress(backend: LiveService) -> None:
    """A worker's heartbeat with a diverged loss is stored, and the job still reads back (a
    non-finite number would otherwise fail PostgreSQL's JSONB, or reach clients as null)."""
    metrics = {"test_accuracy": 0.5, "train_loss": NAN, "test_loss": INF}
    progress = Progress(
        round=0, rounds_total=3, step=1, steps_total=300, fraction=0.01, metrics=metrics
    )
    with backend.tenant_client() as owner:
        job = _post_spec(owner, copy.deepcopy(MINIMAL_SPEC)).json()
        with backend.sessions.begin() as session:
            assert job_store.claim_job(session, job["id"], "w1").claimed
        with backend.sessions.begin() as session:
            assert job_store.heartbeat(session, job["id"], attempt=1, progress=progress).owned
        shown = owner.get(job["urls"]["self"])
        assert shown.status_code == 200, shown.text
        assert shown.json()["progress"]["metrics"] == {"test_accuracy": 0.5}
