"""Webhook signing (the Standard Webhooks test vector) and delivery with retries to a real
local HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from store.webhooks import deliver, host_allowed, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_reference() -> None:
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_host_allowlist() -> None:
    assert host_allowed("https://CI.example.com/hook", ["ci.example.com"])
    assert not host_allowed("https://ci.example.com.evil.net/hook", ["ci.example.com"])
    assert not host_allowed("http://169.254.169.254/latest", ["ci.example.com"])


class Receiver:
    """A real HTTP server answering with the next status of ``script``; records requests."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(list(request.param))
    yield server
    server.server.shutdown()


def verify(headers: dict[str, str], body: bytes) -> bool:
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


@pytest.mark.parametrize("receiver", [[500, 503]], indirect=True)
def test_delivery_is_retried_with_the_same_id_and_signed(receiver: Receiver) -> None:
    ok, detail = deliver(
        receiver.url,
        {"type": "job.succeeded"},
        secret=SECRET,
        message_id="msg_1",
        first_backoff_s=0.01,
    )
    assert ok and "3 attempt" in detail
    assert [h["webhook-id"] for h, _ in receiver.requests] == ["msg_1"] * 3
    assert all(verify(h, body) for h, body in receiver.requests)
    assert json.loads(receiver.requests[-1][1]) == {"type": "job.succeeded"}


@pytest.mark.parametrize("receiver", [[404]], indirect=True)
def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    ok, detail = deliver(receiver.url, {}, secret=SECRET, message_id="m", first_backoff_s=0.01)
    assert not ok and detail == "HTTP 404" and len(receiver.requests) == 1


def test_an_unreachable_receiver_gives_up_after_the_attempts() -> None:
    ok, detail = deliver(
        "http://127.0.0.1:9/hook", {}, secret=SECRET, message_id="m", attempts=2, first_backoff_s=0
    )
    assert not ok and "ConnectError" in detail
