"""Shared dense runs and round prefixes through a real deployment: a later job of the same
tenant takes the trainings an earlier one already did, says so, and gets the same numbers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.deployments import SMALL_SPEC, TERMINAL, Deployment

pytestmark = pytest.mark.e2e


def run_job(client: Any, spec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 180
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return job, events


def reused(events: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(e["data"]["round"], e["data"]["variant"]) for e in events if e["type"] == "reuse"}


def rounds(client: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get(f"/v1/jobs/{job['id']}/rounds").json()
    return data


def test_later_jobs_reuse_the_dense_round_and_round_prefixes(production: Deployment) -> None:
    base = {**SMALL_SPEC, "pruning": {**SMALL_SPEC["pruning"], "rounds": 1}}
    key = production.key("tenant-reuse")
    with production.client(key) as client:
        first, first_events = run_job(client, base)
        assert first["status"] == "succeeded", production.log_tail()
        assert reused(first_events) == set()

        # More rounds: round 0 and round 1 (ticket and control) come from the first job.
        longer = {**base, "pruning": {**base["pruning"], "rounds": 2}}
        second, second_events = run_job(client, longer)
        assert second["status"] == "succeeded", production.log_tail()
        assert reused(second_events) == {(0, "ticket"), (1, "ticket"), (1, "random_reinit")}
        a, b = rounds(client, first), rounds(client, second)
        assert b[1]["ticket"]["accuracy"] == a[1]["ticket"]["accuracy"]
        assert len(b) == 3

        # Other pruning rates: only the dense round is shared.
        rates = {**base, "pruning": {**base["pruning"], "rates": {"linear": 0.3}}}
        third, third_events = run_job(client, rates)
        assert reused(third_events) == {(0, "ticket")}
        artifacts = client.get(f"/v1/jobs/{third['id']}/artifacts").json()["data"]
        assert "rounds/0/trained.safetensors" in {a["name"] for a in artifacts}

        # Opting out trains everything again.
        fresh, fresh_events = run_job(client, {**longer, "reuse": False})
        assert fresh["status"] == "succeeded" and reused(fresh_events) == set()

    # Another tenant never sees the first tenant's trainings.
    with production.client(production.key("tenant-other")) as client:
        other, other_events = run_job(client, base)
        assert other["status"] == "succeeded" and reused(other_events) == set()
