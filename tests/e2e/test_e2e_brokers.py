"""Celery's canonical broker: the production deployment on RabbitMQ (AMQP) instead of Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.queue import broker_options
from tests.e2e.deployments import SMALL_SPEC, TERMINAL, Deployment, wait_for

pytestmark = pytest.mark.e2e


def test_a_job_runs_on_rabbitmq(production_amqp: Deployment) -> None:
    with production_amqp.client(production_amqp.key("tenant-a")) as client:
        response = client.post("/v1/jobs", json=SMALL_SPEC)
        assert response.status_code == 202, response.text
        done = wait_for(client, response.json()["id"], TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (done, production_amqp.log_tail())
        assert client.get("/readyz").json()["checks"]["broker"] == "ok"


def test_only_redis_gets_a_visibility_timeout(tmp_path: Path) -> None:
    """Redis redelivers a task unacknowledged for longer than its visibility timeout, so it must
    outlast any job; AMQP has no such option (RabbitMQ's timeout is the server's)."""
    redis = broker_options("redis://127.0.0.1:6379/0", tmp_path, 3600)
    assert redis["broker_transport_options"] == {"visibility_timeout": 7200}
    assert "broker_transport_options" not in broker_options("amqp://h//", tmp_path, 3600)
    assert broker_options(None, tmp_path, 3600)["broker_url"] == "filesystem://"
