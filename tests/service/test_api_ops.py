"""Probes, metrics, OpenAPI, models and the auth-disabled mode, over real HTTP."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from service.readiness import broker_check
from store.tenants import hash_key


def test_health_and_readiness(live: Any, service_factory: Any) -> None:
    with live.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}

    def no_workers() -> None:
        raise RuntimeError("no live worker")

    other = service_factory(broker_url="redis://127.0.0.1:1/0")
    other.app.state.lth.readiness_checks["workers"] = no_workers
    with other.client() as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        checks = response.json()["checks"]
        assert checks["database"] == "ok"
        assert "127.0.0.1:1 is unreachable" in checks["broker"]
        assert checks["workers"] == "no live worker"


def test_broker_check_reaches_real_redis(redis_url: str) -> None:
    broker_check(redis_url)()
    with pytest.raises(RuntimeError):
        broker_check("redis://127.0.0.1:1/0")()
    broker_check(None)()  # embedded: nothing to reach


def test_metrics(live: Any, spec: dict[str, Any]) -> None:
    with live.tenant_client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        client.get(f"/v1/jobs/{job_id}")
        client.get("/v1/jobs/job_missing")
        text = live.client().get("/metrics").text
    queued = re.search(r'^lth_jobs\{status="queued"\} (\d+)', text, re.M)
    assert queued and int(float(queued.group(1))) >= 1
    assert 'lth_jobs{status="succeeded"}' in text
    assert "lth_store_up 1.0" in text
    # Latency is labelled by the route template, never the concrete id.
    assert 'route="/v1/jobs/{job_id}",status="200"' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert job_id not in text


def test_openapi(live: Any) -> None:
    schema = live.client().get("/openapi.json").json()
    create = schema["paths"]["/v1/jobs"]["post"]
    example = create["requestBody"]["content"]["application/json"]["examples"]["minimal"]
    assert example["value"]["model"] == {"arch": "lenet_300_100"}
    assert create["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    for code in ("401", "409", "422", "429"):
        content = create["responses"][code]["content"]
        assert content == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()
    job_fields = schema["components"]["schemas"]["Job"]["properties"]
    assert all("description" in field for field in job_fields.values())
    upload = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload


def test_models(live: Any) -> None:
    with live.tenant_client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["lenet_300_100"]["parameters"] == 266_610
        assert models["resnet20"]["parameters"] == 272_474
        assert models["mlp"]["parameters"] is None and "hidden_sizes" in models["mlp"]["options"]
        assert client.get("/v1/models/conv2").json()["parameters"] == 4_301_642
        assert client.get("/v1/models/alexnet").status_code == 404


def test_auth_disabled(
    service_factory: Any, spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service"):
        local = service_factory(auth="disabled")
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
    with local.client() as client:
        job = client.post("/v1/jobs", json=spec).json()
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    with local.client("anything") as other:
        assert [j["id"] for j in other.get("/v1/jobs").json()["data"]] == [job["id"]]


def test_api_keys_never_reach_the_logs(
    live: Any, spec: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Keys are stored hashed, and neither a valid nor a refused key is ever written to a log,
    whatever the level."""
    with caplog.at_level(logging.DEBUG):
        key = live.new_key()
        with live.client(key) as client:
            job = client.post("/v1/jobs", json=spec).json()
            assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
        wrong = key[:-4] + "beef"
        with live.client(wrong) as client:
            assert client.get("/v1/jobs").status_code == 401
    assert caplog.records  # the service did log, at every level it has
    assert key not in caplog.text and wrong not in caplog.text
    with live.sessions() as session:
        stored = session.execute(sa.text("SELECT key_hash FROM api_keys")).scalars().all()
    assert key not in stored and hash_key(key) in stored


def test_open_mode_serves_only_on_loopback(tmp_path: Any) -> None:
    """``LTH_AUTH=disabled`` anywhere but on a loopback address would open every tenant's jobs
    to the network: ``lth serve`` refuses to start."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lth = str(Path(sys.executable).parent / "lth")
    env = {**os.environ, "LTH_HOME": str(tmp_path), "LTH_AUTH": "disabled"}
    done = subprocess.run(
        [lth, "serve", "--host", "0.0.0.0", "--no-worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "may only bind to localhost, not 0.0.0.0" in done.stderr
    assert not (tmp_path / "lth.db").exists()  # refused before anything was set up


def test_unexpected_errors_are_opaque_problems(
    service_factory: Any, expect_problem: Callable[..., Any]
) -> None:
    broken = service_factory()
    with broken.tenant_client() as client:
        state = broken.app.state.lth
        for sessions in (state.sessions, state.read_sessions):
            sessions.configure(bind=None)  # every query now fails
        response = client.get("/v1/datasets")
    body = expect_problem(response, 500)
    assert "Traceback" not in response.text and "bind" not in response.text
    assert body["type"] == "about:blank"
