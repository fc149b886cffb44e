"""The request body cap over real HTTP: declared and chunked bodies, and the upload exemption."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import LiveService, ServiceFactory

Spec = dict[str, Any]
ProblemCheck = Callable[..., dict[str, Any]]
CAP = 32 * 1024


@pytest.fixture(scope="module")
def capped(service_factory: ServiceFactory) -> LiveService:
    return service_factory(max_body_bytes=CAP)


def _pieces(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """The body as a generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _padded(spec: Spec, size: int) -> bytes:
    """``spec`` as JSON of exactly ``size`` bytes: still valid, padded with whitespace."""
    body = json.dumps(spec).encode()
    return body + b" " * (size - len(body))


def _no_job_stored(capped: LiveService, client: Any, enqueued: int) -> None:
    assert client.get("/v1/jobs").json()["data"] == []
    assert len(capped.enqueued) == enqueued


def test_declared_body_over_the_cap_is_413(
    capped: LiveService, spec: Spec, expect_problem: ProblemCheck
) -> None:
    before = len(capped.enqueued)
    with capped.tenant_client() as client:
        response = client.post(
            "/v1/jobs",
            content=_padded(spec, CAP + 1),
            headers={"content-type": "application/json"},
        )
        assert "content-length" in response.request.headers
        body = expect_problem(response, 413)
        assert body["type"] == "urn:lth:problem:body-too-large"
        assert body["max_bytes"] == CAP
        _no_job_stored(capped, client, before)


def test_chunked_body_over_the_cap_is_413(
    capped: LiveService, spec: Spec, expect_problem: ProblemCheck
) -> None:
    before = len(capped.enqueued)
    with capped.tenant_client() as client:
        response = client.post(
            "/v1/jobs",
            content=_pieces(_padded(spec, 4 * CAP)),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in response.request.headers
        assert expect_problem(response, 413)["max_bytes"] == CAP
        _no_job_stored(capped, client, before)


def test_bodies_up_to_the_cap_pass(
    capped: LiveService, spec: Spec, expect_problem: ProblemCheck
) -> None:
    with capped.tenant_client() as client:
        for body in (_padded(spec, CAP), _pieces(_padded(spec, CAP))):
            response = client.post(
                "/v1/jobs", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 202, response.text
        response = client.post(
            "/v1/jobs",
            content=_pieces(_padded(spec, CAP + 1)),
            headers={"content-type": "application/json"},
        )
        expect_problem(response, 413)


def test_uploads_keep_their_own_cap(
    capped: LiveService, spec: Spec, expect_problem: ProblemCheck
) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((800, 4, 4), dtype=np.float32),
        y_train=np.arange(800) % 3,
        x_test=rng.random((20, 4, 4), dtype=np.float32),
        y_test=np.arange(20) % 3,
    )
    content = buffer.getvalue()
    assert CAP < len(content) < capped.settings.max_upload_bytes
    with capped.tenant_client() as client:
        response = client.post("/v1/datasets", files={"file": ("big.npz", content)})
        assert response.status_code == 201, response.text
        response = client.post(
            "/v1/jobs",
            content=_padded(spec, len(content)),
            headers={"content-type": "application/json"},
        )
        expect_problem(response, 413)
