"""Artifact listing and download over real HTTP: ETag, 304, Range 206/416, no traversal."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ProblemCheck = Callable[..., dict[str, Any]]

TICKET = bytes(range(256)) * 40  # 10,240 bytes
MASK = b"mask-bytes" * 100


@pytest.fixture
def job(live: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """A job of a new tenant with a realistic artifact folder, and a client for that tenant."""
    client = live.tenant_client()
    job: dict[str, Any] = client.post("/v1/jobs", json=spec).json()
    folder: Path = live.settings.artifact_root / job["id"]
    (folder / "rounds" / "3").mkdir(parents=True)
    (folder / "ticket.safetensors").write_bytes(TICKET)
    (folder / "rounds" / "3" / "mask.safetensors").write_bytes(MASK)
    (folder / "rounds.json").write_text("[]")
    (folder / ".checkpoint.tmp").write_bytes(b"partial")  # hidden/temporary: never served
    secret = live.settings.artifact_root / "secret.txt"
    secret.write_text("another job's secret")
    (folder / "link.txt").symlink_to(secret)  # a symlink out of the folder: never served
    manifest = {
        "artifacts": [{"name": "ticket.safetensors", "size": len(TICKET), "sha256": "a" * 64}]
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    job["client"] = client
    return job


def test_list(job: dict[str, Any], live: Any) -> None:
    client = job["client"]
    listed = client.get(job["urls"]["artifacts"]).json()["data"]
    by_name = {a["name"]: a for a in listed}
    assert sorted(by_name) == [
        "manifest.json",
        "rounds.json",
        "rounds/3/mask.safetensors",
        "ticket.safetensors",
    ]
    assert by_name["ticket.safetensors"]["sha256"] == "a" * 64  # from the manifest
    assert by_name["rounds/3/mask.safetensors"]["sha256"] == hashlib.sha256(MASK).hexdigest()
    assert by_name["rounds/3/mask.safetensors"]["size"] == len(MASK)
    assert by_name["rounds.json"]["media_type"] == "application/json"
    assert by_name["ticket.safetensors"]["url"] == (
        f"{live.url}/v1/jobs/{job['id']}/artifacts/ticket.safetensors"
    )
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").status_code == 200


def test_download_etag_and_conditional(job: dict[str, Any]) -> None:
    client = job["client"]
    url = f"/v1/jobs/{job['id']}/artifacts/rounds/3/mask.safetensors"
    response = client.get(url)
    assert response.status_code == 200 and response.content == MASK
    etag = f'"{hashlib.sha256(MASK).hexdigest()}"'
    assert response.headers["etag"] == etag
    assert response.headers["accept-ranges"] == "bytes"
    assert "mask.safetensors" in response.headers["content-disposition"]
    not_modified = client.get(url, headers={"If-None-Match": f'"other", {etag}'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(MASK))


def test_range(job: dict[str, Any], expect_problem: ProblemCheck) -> None:
    client = job["client"]
    url = f"/v1/jobs/{job['id']}/artifacts/ticket.safetensors"
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == TICKET[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(TICKET)}"
    assert part.headers["etag"] == f'"{"a" * 64}"'
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == TICKET[-10:]
    resumed = client.get(url, headers={"Range": "bytes=10000-", "If-Range": f'"{"a" * 64}"'})
    assert resumed.status_code == 206 and resumed.content == TICKET[10000:]
    stale = client.get(url, headers={"Range": "bytes=10000-", "If-Range": '"changed"'})
    assert stale.status_code == 200 and stale.content == TICKET
    beyond = client.get(url, headers={"Range": f"bytes={len(TICKET)}-"})
    body = expect_problem(beyond, 416)
    assert beyond.headers["content-range"] == f"bytes */{len(TICKET)}"
    assert body["type"] == "urn:lth:problem:range-not-satisfiable"
    malformed = client.get(url, headers={"Range": "bytes=50-10"})
    assert malformed.status_code == 200 and malformed.content == TICKET


def _raw_get(base: str, path: str, key: str) -> int:
    """Send the path byte for byte (httpx would normalise dot segments)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), 5) as sock:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fsecret.txt",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "rounds/../../secret.txt",
        "rounds%2F..%2F..%2Fsecret.txt",
        "link.txt",
        ".checkpoint.tmp",
        "rounds",
        "nothing.bin",
        "%2e%2e/secret.txt",
    ],
)
def test_traversal_is_impossible(
    job: dict[str, Any], live: Any, expect_problem: ProblemCheck, name: str
) -> None:
    client = job["client"]
    path = f"/v1/jobs/{job['id']}/artifacts/{name}"
    key = client.headers["authorization"].removeprefix("Bearer ")
    assert _raw_get(live.url, path, key) == 404
    response = client.get(path)
    assert response.status_code == 404
    if response.request.url.path.startswith(f"/v1/jobs/{job['id']}/artifacts/"):
        expect_problem(response, 404)
