"""GET /v1/jobs/{id}/report and /report.png over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from tests.report.conftest import TINY_SPEC, Server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expect_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def test_report_route(server: Server, tiny_run: Path) -> None:
    owner, stranger = server.client(), server.client()
    job = owner.post("/v1/jobs", json=TINY_SPEC)
    assert job.is_success, job.text
    job_id = job.json()["id"]
    folder = server.settings.artifact_root / job_id
    folder.mkdir(parents=True, exist_ok=True)
    url = f"/v1/jobs/{job_id}/report"

    body = expect_problem(owner.get(url), 404)
    assert body["type"].endswith("no-report-yet")

    # Mid-run: rounds.json (and the engine's spec.json) only → a draft, never an artifact.
    shutil.copy(tiny_run / "spec.json", folder / "spec.json")
    shutil.copy(tiny_run / "rounds.json", folder / "rounds.json")
    draft = owner.get(url)
    assert draft.status_code == 200, draft.text
    assert draft.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in draft.headers["content-security-policy"]
    assert "Run in progress" in draft.text and '<table id="rounds">' in draft.text
    names = [a["name"] for a in owner.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
    assert not [n for n in names if "report" in n]

    # Finished, before the worker published its report: drawn by the API in its own cache,
    # never written into the store (so never an artifact).
    shutil.copytree(tiny_run, folder, dirs_exist_ok=True)
    final = owner.get(url)
    assert final.status_code == 200
    html = final.text
    assert "Run in progress" not in html and "winning ticket" in html
    assert html.count("<tr") == 4 and "random_prune accuracy" in html
    assert "tiny &lt;run&gt; &amp; &quot;friends&quot;" in html
    assert html.count('src="data:image/png;base64,') == 3
    assert not [p for p in folder.iterdir() if p.name.startswith((".report", "report"))]
    names = [a["name"] for a in owner.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
    assert not [n for n in names if "report" in n]
    assert owner.get(url).text == html  # served from the cache now, not redrawn

    png = owner.get(f"{url}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)

    # The report the worker publishes is an artifact, and served as it is.
    (folder / "report.html").write_text("<p>published</p>")
    (folder / "report.png").write_bytes(PNG_MAGIC + b"published")
    names = [a["name"] for a in owner.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
    assert {"report.html", "report.png"} <= set(names)
    assert owner.get(url).text == "<p>published</p>"
    assert owner.get(f"{url}.png").content == PNG_MAGIC + b"published"

    # A newer rounds.json (say, a resumed run) makes the report stale: it is drawn again.
    later = time.time() + 5
    os.utime(folder / "rounds.json", (later, later))
    redrawn = owner.get(url)
    assert redrawn.status_code == 200 and "winning ticket" in redrawn.text
    assert (folder / "report.html").read_text() == "<p>published</p>"  # the store untouched

    # Another tenant's job reads exactly like a missing one.
    foreign = expect_problem(stranger.get(url), 404)
    missing = expect_problem(owner.get("/v1/jobs/job_" + "0" * 26 + "/report"), 404)
    assert foreign["detail"] == missing["detail"] and foreign["type"] == missing["type"]
    expect_problem(stranger.get(f"{url}.png"), 404)
    expect_problem(httpx.get(server.url + url), 401)


def test_report_in_openapi(server: Server) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    html = paths["/v1/jobs/{job_id}/report"]["get"]
    assert html["summary"] and "text/html" in html["responses"]["200"]["content"]
    assert "application/problem+json" in html["responses"]["404"]["content"]
    png = paths["/v1/jobs/{job_id}/report.png"]["get"]
    assert "image/png" in png["responses"]["200"]["content"]
