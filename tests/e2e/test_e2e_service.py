"""Jobs through real deployments: HTTP in, a real Celery worker training, artifacts out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load

from api_schemas.examples import minimal_spec
from tests.e2e.deployments import SMALL_SPEC, TERMINAL, Deployment, wait_for, wait_for_progress

pytestmark = pytest.mark.e2e


def submit(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for task in tasks for c in (task / "children").read_text().split()]


def long_spec() -> dict[str, Any]:
    return {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "20000it"}}


def test_a_job_runs_end_to_end_with_progress_events_and_artifacts(
    production: Deployment,
) -> None:
    key = production.key("tenant-a")
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "1000it"}}
    with production.client(key) as client:
        job = submit(client, spec)
        fractions: list[float] = []
        while (job := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in TERMINAL:
            if job["progress"]:
                fractions.append(job["progress"]["fraction"])
            time.sleep(0.1)
        assert job["status"] == "succeeded", (job, production.log_tail())
        assert job["attempt"] == 1
        assert len(set(fractions)) >= 2 and fractions == sorted(fractions)  # progress moved
        assert job["progress"]["fraction"] == 1.0

        events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        types = [e["type"] for e in events]
        states = [e["data"]["status"] for e in events if e["type"] == "state"]
        assert states == ["queued", "running", "succeeded"]
        assert types.count("round") == 3 and "progress" in types

        result = job["result"]
        mask_bytes = client.get(f"/v1/jobs/{job['id']}/artifacts/mask.safetensors")
        ticket_bytes = client.get(f"/v1/jobs/{job['id']}/artifacts/ticket.safetensors")
        assert mask_bytes.status_code == ticket_bytes.status_code == 200
        mask, ticket = load(mask_bytes.content), load(ticket_bytes.content)
        kept = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values())
        assert kept / total == pytest.approx(result["ticket_density"])
        for name, m in mask.items():
            assert bool((ticket[name][~m] == 0).all()), name

        rounds = client.get(f"/v1/jobs/{job['id']}/rounds").json()
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert rounds[result["ticket_round"]]["density"] == result["ticket_density"]

        listed = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        manifest = json.loads(client.get(f"/v1/jobs/{job['id']}/artifacts/manifest.json").content)
        by_name = {a["name"]: a["sha256"] for a in listed}
        for entry in manifest["artifacts"]:
            assert by_name[entry["name"]] == entry["sha256"]

        assert {"report.html", "report.png"} <= set(by_name)  # drawn by the worker
        report = client.get(f"/v1/jobs/{job['id']}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert report.content == client.get(f"/v1/jobs/{job['id']}/artifacts/report.html").content

        metrics = client.get("/metrics").text
        assert 'lth_jobs{status="succeeded"} 1.0' in metrics
        assert "lth_queue_depth 0.0" in metrics
        assert "lth_round_duration_seconds_count 3.0" in metrics
        assert 'lth_http_request_duration_seconds_count{method="POST",route="/v1/jobs"' in metrics

    # Another tenant sees nothing of it.
    with production.client(production.key("tenant-b")) as other:
        assert other.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert other.get(f"/v1/jobs/{job['id']}/artifacts/mask.safetensors").status_code == 404


def test_cancelling_a_running_job_stops_it_within_seconds(production: Deployment) -> None:
    with production.client(production.key("tenant-a")) as client:
        job = submit(client, long_spec())
        running = wait_for(client, job["id"], {"running"})
        while not (running.get("progress") or {}).get("step"):
            running = client.get(f"/v1/jobs/{job['id']}").json()
            time.sleep(0.1)
        asked = time.monotonic()
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code in (200, 202), response.text
        done = wait_for(client, job["id"], TERMINAL, timeout=30)
        assert done["status"] == "cancelled"
        assert time.monotonic() - asked < 10
        # The worker is free again: the next job runs.
        second = submit(client, SMALL_SPEC)
        assert wait_for(client, second["id"], TERMINAL)["status"] == "succeeded"


def test_a_killed_worker_is_replaced_and_the_job_resumes(production: Deployment) -> None:
    # Long enough that round 1 is still training when the signal lands: its two lanes run
    # side by side, a few thousand steps a second each.
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "6000it"}}
    spec["training"]["checkpoint_every"] = "100it"
    with production.client(production.key("tenant-a")) as client:
        job = submit(client, spec)
        wait_for(client, job["id"], {"running"})
        # Killed in round 1, after round 0 has finished and logged its event.
        wait_for_progress(client, job["id"], round=1, step=300)
        production.kill("worker")
        production.start_worker("worker2")
        done = wait_for(client, job["id"], TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (done, production.log_tail())
        assert done["attempt"] == 2
        events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        resumed = [e for e in events if e["type"] == "state" and e["data"].get("resumed")]
        assert resumed and resumed[0]["data"]["attempt"] == 2
        # The second attempt continued round 1 from a checkpoint instead of starting over.
        after = [e for e in events if e["id"] > resumed[0]["id"] and e["type"] == "progress"]
        assert after[0]["data"]["round"] == 1 and after[0]["data"]["step"] >= 300
        # ... and logged every round once, round 0 included.
        assert [e["data"]["round"] for e in events if e["type"] == "round"] == [0, 1, 2]


def test_a_worker_stopped_with_sigterm_hands_its_job_to_another(production: Deployment) -> None:
    """``docker stop`` signals the Celery parent alone: the worker must neither wait for the
    job to end (hours) nor die mid-round; the job goes back to the queue and another worker
    resumes it from its checkpoints."""
    import os
    import signal

    # Long enough that round 1 is still training when the signal lands: its two lanes run
    # side by side, a few thousand steps a second each.
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "6000it"}}
    spec["training"]["checkpoint_every"] = "100it"
    with production.client(production.key("tenant-a")) as client:
        job = submit(client, spec)
        wait_for(client, job["id"], {"running"})
        wait_for_progress(client, job["id"], round=1, step=300)
        first = production.processes.pop("worker")
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(timeout=60) == 0, production.log_tail()
        job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["status"] == "queued", job
        production.start_worker("worker2")
        done = wait_for(client, job["id"], TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (done, production.log_tail())
        assert done["attempt"] == 2
        events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
        states = [e["data"] for e in events if e["type"] == "state"]
        assert {"status": "queued", "reason": "worker_stopping"} in states
        # The second attempt went on with round 1 from a checkpoint, not from its start.
        handed = next(e["id"] for e in events if e["data"].get("reason") == "worker_stopping")
        after = [e for e in events if e["id"] > handed and e["type"] == "progress"]
        assert after[0]["data"]["round"] == 1 and after[0]["data"]["step"] >= 300
        assert [e["data"]["round"] for e in events if e["type"] == "round"] == [0, 1, 2]


def test_a_diverging_job_fails_with_the_step_and_the_worker_goes_on(
    production: Deployment,
) -> None:
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "lr": 1e6, "optimizer": "sgd"}}
    with production.client(production.key("tenant-a")) as client:
        job = submit(client, spec)
        done = wait_for(client, job["id"], TERMINAL)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "diverged"
        assert "loss became non-finite at step" in done["error"]["message"]
        assert "round 0, ticket" in done["error"]["message"]
        # The worker survived it: the next job runs.
        assert wait_for(client, submit(client, SMALL_SPEC)["id"], TERMINAL)["status"] == (
            "succeeded"
        )


def test_duplicate_deliveries_run_a_job_once(production: Deployment) -> None:
    """A second copy of the task message (redelivery) finds the job claimed and does nothing."""
    from store.queue import CeleryEnqueue, make_celery

    with production.client(production.key("tenant-a")) as client:
        job = submit(client, SMALL_SPEC)
        producer = make_celery(production.env["LTH_BROKER_URL"], production.home, 3600)
        for _ in range(2):
            CeleryEnqueue(producer)(job["id"], "auto")
        done = wait_for(client, job["id"], TERMINAL)
        assert done["status"] == "succeeded" and done["attempt"] == 1
        time.sleep(1.0)  # the duplicates are consumed after the job; they must change nothing
        again = client.get(f"/v1/jobs/{job['id']}").json()
        assert again["attempt"] == 1 and again["status"] == "succeeded"


def test_a_job_failing_in_the_worker_reports_why(production: Deployment) -> None:
    # torchvision's model names are checked by the worker (the API does not import torch).
    spec = {**SMALL_SPEC, "model": {"arch": "torchvision:no_such_model"}}
    with production.client(production.key("tenant-a")) as client:
        job = submit(client, spec)
        done = wait_for(client, job["id"], TERMINAL)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "invalid_model"
        assert "no_such_model" in done["error"]["message"]
        # What the API can know is refused at submission instead: a hold-out larger than
        # the 1,200 training examples, a rewind point past the end in epochs.
        too_big = {**SMALL_SPEC, "dataset": {**SMALL_SPEC["dataset"], "validation_size": 5000}}
        refused = client.post("/v1/jobs", json=too_big)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["loc"] == "dataset.validation_size"
        late = {**SMALL_SPEC, "pruning": {**SMALL_SPEC["pruning"], "rewind_to": "4ep"}}
        refused = client.post("/v1/jobs", json=late)  # 1000 / 20 = 50 per epoch; 150it total
        assert refused.json()["errors"][0]["loc"] == "pruning.rewind_to"


def test_the_embedded_default_runs_the_minimal_spec_as_posted(
    embedded: Deployment, fashion_mnist_dir: Any
) -> None:
    minimal = minimal_spec(dataset={"uri": f"idx://{fashion_mnist_dir}", "validation_size": 5000})
    with embedded.client() as client:
        job = submit(client, minimal)
        done = wait_for(client, job["id"], TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (done, embedded.log_tail())
        assert done["result"]["ticket_density"] <= 0.6407
        assert done["result"]["dense_accuracy"] > 0.75


def test_the_embedded_service_restarts_its_worker_and_resumes_the_job(
    embedded: Deployment,
) -> None:
    import os
    import signal

    # Long enough that round 1 is still training when the signal lands: its two lanes run
    # side by side, a few thousand steps a second each.
    spec = {**SMALL_SPEC, "training": {**SMALL_SPEC["training"], "steps": "6000it"}}
    spec["training"]["checkpoint_every"] = "100it"
    with embedded.client() as client:
        job = submit(client, spec)
        wait_for(client, job["id"], {"running"})
        while ((job := client.get(f"/v1/jobs/{job['id']}").json()).get("progress") or {}).get(
            "step", 0
        ) < 300:
            time.sleep(0.1)
        # kill -9 the supervised worker (the Celery parent and its child running the job)
        workers = [
            pid
            for pid in children(embedded.processes["serve"].pid)
            if b"-m\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 1, embedded.log_tail()
        for pid in [*children(workers[0]), workers[0]]:
            os.kill(pid, signal.SIGKILL)
        done = wait_for(client, job["id"], TERMINAL, timeout=180)
        assert done["status"] == "succeeded", (done, embedded.log_tail())
        assert done["attempt"] == 2


def test_sigterm_stops_lth_serve_and_the_worker_it_supervises(embedded: Deployment) -> None:
    """What systemd, ``docker stop`` and ``lth demo`` do: SIGTERM to the serve process alone
    (not its process group) must not leave its worker running, reparented to PID 1."""
    import os
    import signal

    serve = embedded.processes["serve"]
    deadline = time.monotonic() + 60
    while not (workers := children(serve.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers, embedded.log_tail()
    supervised = [pid for worker in workers for pid in (worker, *children(worker))]
    os.kill(serve.pid, signal.SIGTERM)
    assert serve.wait(timeout=60) == 0, embedded.log_tail()
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in supervised if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == [], embedded.log_tail()
    # ... of its own accord: an idle pool process killed while it held the pool's queue lock
    # used to leave the worker's shutdown waiting until the supervisor killed it.
    assert "did not stop" not in embedded.logs["serve"].read_text(), embedded.log_tail()


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_completion_webhooks_are_signed_and_restricted(production: Deployment) -> None:
    from tests.store.test_store_webhooks import Receiver, verify

    receiver = Receiver([503])  # the first delivery fails: the worker retries
    try:
        with production.client(production.key("tenant-a")) as client:
            refused = client.post(
                "/v1/jobs", json={**SMALL_SPEC, "webhook_url": "http://10.0.0.1/hook"}
            )
            assert refused.status_code == 422
            assert refused.json()["errors"][0]["loc"] == "webhook_url"

            job = submit(client, {**SMALL_SPEC, "webhook_url": receiver.url})
            assert wait_for(client, job["id"], TERMINAL)["status"] == "succeeded"
            deadline = time.monotonic() + 30
            while len(receiver.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            headers, body = receiver.requests[-1]
            assert verify(headers, body)
            sent = json.loads(body)
            assert sent["type"] == "job.succeeded" and sent["data"]["id"] == job["id"]
            assert sent["data"]["result"]["ticket_round"] >= 0
    finally:
        receiver.server.shutdown()
