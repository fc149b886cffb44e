"""Artifacts, rounds and reports read from the artifact store, over real HTTP, on the local
store and on S3 (a real moto server): listing, ETag/304, Range 206/416, presigned redirects."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.report.replicated import write_run
from tests.service.conftest import ServiceFactory
from tests.service.store_backends import KINDS, Backend, start_backend

ProblemCheck = Callable[..., dict[str, Any]]

TICKET = bytes(range(256)) * 40  # 10,240 bytes
MASK = b"mask-bytes" * 100
CSV = "round,accuracy\n0,0.9\n"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=KINDS)
def backend(request: pytest.FixtureRequest, service_factory: ServiceFactory) -> Backend:
    return start_backend(request, service_factory, request.param)


@pytest.fixture(scope="module")
def presigned(request: pytest.FixtureRequest, service_factory: ServiceFactory) -> Backend:
    return start_backend(request, service_factory, "s3", artifact_redirect="presigned")


def _job(backend: Backend, spec: dict[str, Any]) -> dict[str, Any]:
    """A job of a new tenant whose run the worker has published, and a client for the tenant."""
    client = backend.live.tenant_client()
    job: dict[str, Any] = client.post("/v1/jobs", json=spec).json()
    manifest = {
        "artifacts": [{"name": "ticket.safetensors", "size": len(TICKET), "sha256": "a" * 64}]
    }
    files = {
        "ticket.safetensors": TICKET,
        "rounds/3/mask.safetensors": MASK,
        "rounds.json": b"[]",
        "table.csv": CSV.encode(),
        "manifest.json": json.dumps(manifest).encode(),
        ".checkpoint.tmp": b"partial",  # hidden/temporary: never listed, never served
        "rounds/3/.mask.safetensors.part": b"partial",
    }
    for name, data in files.items():
        backend.put(f"{job['id']}/{name}", data)
    backend.put("secret.txt", b"outside every job")
    job["client"] = client
    return job


@pytest.fixture
def job(backend: Backend, spec: dict[str, Any]) -> dict[str, Any]:
    return _job(backend, spec)


def test_list_comes_from_the_store(job: dict[str, Any], backend: Backend) -> None:
    client = job["client"]
    listed = client.get(job["urls"]["artifacts"]).json()["data"]
    by_name = {a["name"]: a for a in listed}
    assert list(by_name) == [
        "manifest.json",
        "rounds.json",
        "rounds/3/mask.safetensors",
        "table.csv",
        "ticket.safetensors",
    ]
    assert by_name["ticket.safetensors"]["sha256"] == "a" * 64  # from the manifest
    assert by_name["rounds/3/mask.safetensors"]["sha256"] == hashlib.sha256(MASK).hexdigest()
    assert by_name["rounds/3/mask.safetensors"]["size"] == len(MASK)
    assert by_name["rounds.json"]["media_type"] == "application/json"
    assert by_name["table.csv"]["media_type"] == "text/csv"
    assert by_name["ticket.safetensors"]["url"] == (
        f"{backend.live.url}/v1/jobs/{job['id']}/artifacts/ticket.safetensors"
    )
    # A manifest entry whose size no longer matches is not trusted: the object is hashed.
    backend.put(f"{job['id']}/ticket.safetensors", TICKET + b"!")
    again = {a["name"]: a for a in client.get(job["urls"]["artifacts"]).json()["data"]}
    assert again["ticket.safetensors"]["sha256"] == hashlib.sha256(TICKET + b"!").hexdigest()


def test_download_etag_conditional_and_head(job: dict[str, Any]) -> None:
    client = job["client"]
    url = f"/v1/jobs/{job['id']}/artifacts/rounds/3/mask.safetensors"
    response = client.get(url)
    assert response.status_code == 200 and response.content == MASK
    etag = f'"{hashlib.sha256(MASK).hexdigest()}"'
    assert response.headers["etag"] == etag
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(MASK))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="mask.safetensors"'
    assert response.headers["cache-control"] == "private, max-age=0, must-revalidate"
    assert "last-modified" in response.headers
    not_modified = client.get(url, headers={"If-None-Match": f'"other", {etag}'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": f"W/{etag}"}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(MASK)) and head.headers["etag"] == etag
    csv = client.get(f"/v1/jobs/{job['id']}/artifacts/table.csv")
    assert csv.text == CSV and csv.headers["content-type"] == "text/csv; charset=utf-8"


def test_range(job: dict[str, Any], expect_problem: ProblemCheck) -> None:
    client = job["client"]
    url = f"/v1/jobs/{job['id']}/artifacts/ticket.safetensors"
    strong = f'"{"a" * 64}"'
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == TICKET[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(TICKET)}"
    assert part.headers["content-length"] == "100"
    assert part.headers["etag"] == strong
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == TICKET[-10:]
    past_end = client.get(url, headers={"Range": f"bytes=10000-{len(TICKET) + 50}"})
    assert past_end.status_code == 206 and past_end.content == TICKET[10000:]
    resumed = client.get(url, headers={"Range": "bytes=10000-", "If-Range": strong})
    assert resumed.status_code == 206 and resumed.content == TICKET[10000:]
    dated = client.get(
        url, headers={"Range": "bytes=0-0", "If-Range": part.headers["last-modified"]}
    )
    assert dated.status_code == 206 and dated.content == TICKET[:1]
    for stale in ('"changed"', f"W/{strong}"):
        whole = client.get(url, headers={"Range": "bytes=10000-", "If-Range": stale})
        assert whole.status_code == 200 and whole.content == TICKET
    head = client.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.headers["content-length"] == "10"
    assert head.content == b""
    beyond = client.get(url, headers={"Range": f"bytes={len(TICKET)}-"})
    body = expect_problem(beyond, 416)
    assert beyond.headers["content-range"] == f"bytes */{len(TICKET)}"
    assert beyond.headers["etag"] == strong
    assert body["type"] == "urn:lth:problem:range-not-satisfiable"
    for malformed in ("bytes=50-10", "bytes=abc", "items=0-5", "bytes"):
        response = client.get(url, headers={"Range": malformed})
        assert response.status_code == 200 and response.content == TICKET, malformed


def test_several_ranges_are_multipart(job: dict[str, Any]) -> None:
    client = job["client"]
    url = f"/v1/jobs/{job['id']}/artifacts/ticket.safetensors"
    response = client.get(url, headers={"Range": "bytes=0-9, 20-29, 25-39"})
    assert response.status_code == 206
    media_type, _, boundary = response.headers["content-type"].partition("; boundary=")
    assert media_type == "multipart/byteranges" and boundary
    assert response.headers["content-length"] == str(len(response.content))
    parts = response.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--"
    bodies = []
    for part in parts[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        assert b"Content-Type: application/octet-stream" in head
        bodies.append((re.search(rb"bytes (\d+)-(\d+)/10240", head), data.removesuffix(b"\r\n")))
    spans = [(int(m.group(1)), int(m.group(2))) for m, _ in bodies if m]
    assert spans == [(0, 9), (20, 39)]  # overlapping ranges merged, as Starlette does
    assert [data for _, data in bodies] == [TICKET[0:10], TICKET[20:40]]


@pytest.mark.parametrize(
    "name",
    [
        "..%2Fsecret.txt",
        "%2Fetc%2Fpasswd",
        "rounds%2F..%2F..%2Fsecret.txt",
        ".checkpoint.tmp",
        "rounds/3/.mask.safetensors.part",
        "rounds",
        "rounds/",
        "nothing.bin",
        "a%5Cb",
        "a%00b",
    ],
)
def test_only_visible_objects_of_the_job(job: dict[str, Any], name: str) -> None:
    response = job["client"].get(f"/v1/jobs/{job['id']}/artifacts/{name}")
    assert response.status_code == 404
    if response.request.url.path.startswith(f"/v1/jobs/{job['id']}/artifacts/"):
        assert response.headers["content-type"] == "application/problem+json"


def test_another_tenants_artifacts_are_not_found(
    job: dict[str, Any], backend: Backend, expect_problem: ProblemCheck
) -> None:
    with backend.live.tenant_client() as stranger:
        expect_problem(stranger.get(f"/v1/jobs/{job['id']}/artifacts"), 404)
        expect_problem(stranger.get(f"/v1/jobs/{job['id']}/artifacts/ticket.safetensors"), 404)


def test_rounds_come_from_the_store(backend: Backend, spec: dict[str, Any], tmp_path: Path) -> None:
    with backend.live.tenant_client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        assert client.get(f"/v1/jobs/{job_id}/rounds").json() == []
        backend.publish(job_id, write_run(tmp_path / "run"))
        rounds = client.get(f"/v1/jobs/{job_id}/rounds").json()
        assert [r["round"] for r in rounds] == [0, 1, 2]


def test_report_is_served_or_drawn_from_the_store(
    backend: Backend, spec: dict[str, Any], tmp_path: Path, expect_problem: ProblemCheck
) -> None:
    run = write_run(tmp_path / "run")
    with backend.live.tenant_client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        url = f"/v1/jobs/{job_id}/report"
        assert expect_problem(client.get(url), 404)["type"].endswith("no-report-yet")

        # Mid-run (rounds.json only): a draft, drawn outside the store.
        backend.put(f"{job_id}/rounds.json", (run / "rounds.json").read_bytes())
        draft = client.get(url)
        assert draft.status_code == 200 and "Run in progress" in draft.text
        assert backend.raw_keys(f"{job_id}/") == [f"{job_id}/rounds.json"]

        # Finished: the final report, still drawn outside the store, then served from the cache.
        backend.put(f"{job_id}/manifest.json", (run / "manifest.json").read_bytes())
        final = client.get(url)
        assert final.status_code == 200 and "Run in progress" not in final.text
        assert final.text.count("<tr") == 4
        assert client.get(url).text == final.text
        png = client.get(f"{url}.png")
        assert png.status_code == 200 and png.content.startswith(PNG_MAGIC)
        assert backend.raw_keys(f"{job_id}/") == [
            f"{job_id}/manifest.json",
            f"{job_id}/rounds.json",
        ]
        cache = _cache(backend.live.settings, job_id)
        assert len(_drawings(cache)) == 1  # the draft's drawing was superseded

        # The worker's published report is served as it is.
        _after_a_second(backend)
        backend.put(f"{job_id}/report.html", b"<p>published</p>")
        backend.put(f"{job_id}/report.png", PNG_MAGIC + b"published")
        assert client.get(url).text == "<p>published</p>"
        assert client.get(f"{url}.png").content == PNG_MAGIC + b"published"

        # A newer rounds.json (a resumed run) makes it stale: drawn again from the new rounds.
        _after_a_second(backend)
        rounds = json.loads((run / "rounds.json").read_text())
        backend.put(f"{job_id}/rounds.json", json.dumps(rounds[:2]).encode())
        redrawn = client.get(url)
        assert redrawn.status_code == 200 and redrawn.text.count("<tr") == 3
        assert backend.store.read_bytes(f"{job_id}/report.html") == b"<p>published</p>"
        assert len(_drawings(cache)) == 1

        with backend.live.tenant_client() as stranger:
            expect_problem(stranger.get(url), 404)


def _cache(settings: Settings, job_id: str) -> Path:
    return settings.home / "report-cache" / job_id


def _drawings(cache: Path) -> list[Path]:
    return [path for path in cache.iterdir() if not path.name.startswith(".")]


def _after_a_second(backend: Backend) -> None:
    """S3 dates objects to the second: let the next object be strictly newer."""
    time.sleep(1.05 if backend.kind == "s3" else 0.01)


def test_presigned_redirect(presigned: Backend, spec: dict[str, Any]) -> None:
    job = _job(presigned, spec)
    client = job["client"]
    listed = {a["name"]: a for a in client.get(job["urls"]["artifacts"]).json()["data"]}
    mask = listed["rounds/3/mask.safetensors"]
    assert mask["url"].startswith(presigned.live.url)  # the list still names the API
    url = f"/v1/jobs/{job['id']}/artifacts/rounds/3/mask.safetensors"
    etag = f'"{hashlib.sha256(MASK).hexdigest()}"'

    redirect = client.get(url)
    assert redirect.status_code == 307
    assert redirect.headers["cache-control"] == "no-store"
    location = redirect.headers["location"]
    assert location.startswith(presigned.live.settings.s3_endpoint_url or "")
    assert "X-Amz-Signature" in location and "X-Amz-Expires=300" in location
    fetched = httpx.get(location)  # no API key: the URL alone grants the object
    assert fetched.status_code == 200 and fetched.content == MASK
    assert hashlib.sha256(fetched.content).hexdigest() == mask["sha256"]
    assert 'filename="mask.safetensors"' in fetched.headers["content-disposition"]
    part = httpx.get(location, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == MASK[10:20]

    # Followed by a client, with the API key dropped on the way to the other origin.
    followed = client.get(url, follow_redirects=True)
    assert followed.status_code == 200 and followed.content == MASK
    assert "authorization" not in followed.request.headers

    # 304 and HEAD are still answered by the API, with the sha256 ETag.
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    head = client.head(url)
    assert head.status_code == 200 and head.headers["etag"] == etag
    assert head.headers["content-length"] == str(len(MASK))
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/nothing.bin").status_code == 404


def test_the_api_reads_runs_only_through_the_store() -> None:
    """No module of the API names the local artifact root: S3 and the folder are alike to it."""
    service = Path(__file__).resolve().parents[2] / "service"
    naming = [p.name for p in service.rglob("*.py") if "artifact_root" in p.read_text()]
    assert naming == []
