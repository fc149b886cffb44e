"""The SDK's own retry and backoff rules, driven by a scripted transport (no service involved:
these are decisions of the client alone), plus its pure parsers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from client.exit_codes import EPILOG, ExitCode
from client.sdk import (
    AsyncClient,
    Client,
    NotFound,
    RateLimited,
    Unreachable,
    ValidationFailed,
)
from client.sdk.retry import RetryPolicy, retry_after
from client.sdk.sse import Decoder, Message

JOB: dict[str, Any] = {
    "id": "job_" + "0" * 26,
    "status": "queued",
    "spec": {"model": {"arch": "lenet_300_100"}, "dataset": {"uri": "synthetic://"}},
    "spec_hash": "0" * 64,
    "created_at": "2026-01-01T00:00:00Z",
    "attempt": 0,
    "cancel_requested": False,
    "urls": {},
}
PROBLEM = {"type": "urn:lth:problem:x", "title": "T", "detail": "d"}


def scripted(
    answers: list[httpx.Response | Exception], seen: list[httpx.Request]
) -> Callable[[httpx.Request], httpx.Response]:
    """A transport handler answering ``answers`` in order and recording every request."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[len(seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


def problem(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json=PROBLEM | {"status": status},
        headers={"content-type": "application/problem+json", **headers},
    )


def make_client(answers: list[httpx.Response | Exception], seen: list[httpx.Request]) -> Client:
    transport = httpx.MockTransport(scripted(answers, seen))
    return Client("http://lth.test", retries=3, backoff=0.01, transport=transport)


def test_429_waits_retry_after_then_succeeds() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        problem(429, **{"Retry-After": "1"}),
        httpx.Response(202, json=JOB),
    ]
    with make_client(answers, seen) as client:
        started = time.monotonic()
        job = client.create_job({"model": {"arch": "mlp"}})
        waited = time.monotonic() - started
    assert job.id == JOB["id"]
    assert len(seen) == 2
    assert waited >= 0.95, "Retry-After: 1 must be obeyed"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(keys) == 1 and next(iter(keys)), "a retried create reuses its Idempotency-Key"


def test_503_and_connection_errors_back_off_then_give_up() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        problem(503),
        httpx.ConnectError("refused"),
        httpx.Response(200, json=JOB),
    ]
    with make_client(answers, seen) as client:
        assert client.get_job(JOB["id"]).status == "queued"
    assert len(seen) == 3

    seen.clear()
    with (
        make_client([httpx.ConnectError("refused")] * 4, seen) as client,
        pytest.raises(Unreachable),
    ):
        client.get_job(JOB["id"])
    assert len(seen) == 4  # the first try and 3 retries

    seen.clear()
    with make_client([problem(429)] * 4, seen) as client, pytest.raises(RateLimited) as raised:
        client.get_job(JOB["id"])
    assert raised.value.status == 429 and len(seen) == 4


@pytest.mark.parametrize(("status", "error"), [(404, NotFound), (422, ValidationFailed)])
def test_other_client_errors_are_not_retried(status: int, error: type[Exception]) -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [problem(status), httpx.Response(200, json=JOB)]
    with make_client(answers, seen) as client, pytest.raises(error):
        client.get_job(JOB["id"])
    assert len(seen) == 1


def test_requests_that_may_have_arrived_are_repeated_only_when_harmless() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        httpx.ReadError("connection reset"),
        httpx.Response(200, json=JOB),
    ]
    # cancel: a repeat could answer 409, so a request that may have arrived is not repeated
    with make_client(answers, seen) as client, pytest.raises(Unreachable):
        client.cancel_job(JOB["id"])
    assert len(seen) == 1

    seen.clear()
    with make_client(list(answers), seen) as client:  # create: its Idempotency-Key makes it safe
        client.create_job({"model": {"arch": "mlp"}}, idempotency_key="mine")
    assert [r.headers["idempotency-key"] for r in seen] == ["mine", "mine"]


def test_async_client_follows_the_same_rules() -> None:
    seen: list[httpx.Request] = []
    answers: list[httpx.Response | Exception] = [
        problem(503, **{"Retry-After": "0"}),
        httpx.ConnectError("refused"),
        httpx.Response(202, json=JOB),
        problem(404),
    ]

    async def scenario() -> None:
        transport = httpx.MockTransport(scripted(answers, seen))
        async with AsyncClient(
            "http://lth.test", retries=3, backoff=0.01, transport=transport
        ) as c:
            await c.create_job({"model": {"arch": "mlp"}})
            with pytest.raises(NotFound):
                await c.get_job("job_x")

    asyncio.run(scenario())
    assert len(seen) == 4
    assert len({r.headers["idempotency-key"] for r in seen[:3]}) == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(retries=10, backoff=1.0, max_backoff=8.0)
    for attempt, cap in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        delays = {policy.backoff_delay(attempt) for _ in range(20)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1, "jittered"
    assert retry_after(httpx.Headers({"Retry-After": "7"})) == 7
    assert retry_after(httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    assert retry_after(httpx.Headers()) is None


def test_sse_decoder() -> None:
    decoder = Decoder()
    lines = [
        "retry: 2000",
        "",
        ": keepalive",
        "",
        "id: 7",
        "event: state",
        'data: {"a":',
        "data: 1}",
        "",
    ]
    messages = [m for m in map(decoder.feed, lines) if m is not None]
    assert messages == [Message(event="state", data='{"a":\n1}', id="7")]
    assert decoder.retry == 2.0


def test_exit_codes_are_documented() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7, 130]
    for code in ExitCode:
        assert f"{int(code):>3}  " in EPILOG
