"""Jobs over real HTTP: auth, tenant isolation, validation problems, idempotency, caps, cancel."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from store import jobs as job_store
from store.tenants import revoke_api_key

Spec = dict[str, Any]
ProblemCheck = Callable[..., dict[str, Any]]


def test_auth_required(live: Any, spec: Spec, expect_problem: ProblemCheck) -> None:
    with live.client() as anonymous:
        body = expect_problem(anonymous.get("/v1/jobs"), 401)
        response = anonymous.post("/v1/jobs", json=spec)
        expect_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    with live.client("lth_not-a-key") as wrong:
        response = wrong.get("/v1/jobs")
        expect_problem(response, 401)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    key = live.new_key()
    with live.client(key) as client:
        assert client.get("/v1/jobs").status_code == 200
        with live.sessions.begin() as session:
            assert revoke_api_key(session, key)
        expect_problem(client.get("/v1/jobs"), 401)
    assert body["type"] == "urn:lth:problem:unauthorized"
    assert live.client().get("/healthz").status_code == 200  # probes need no key


def test_create_get_and_list(live: Any, spec: Spec) -> None:
    with live.tenant_client() as client:
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["id"].startswith("job_") and len(job["id"]) == 30
        assert response.headers["location"] == f"{live.url}/v1/jobs/{job['id']}"
        assert job["status"] == "queued" and job["attempt"] == 0
        assert job["spec"]["pruning"]["rewind_to"] == "0it"
        assert job["spec"]["training"]["checkpoint_every"] == "1000it"  # defaults filled in
        assert set(job["urls"]) == {"self", "cancel", "events", "artifacts", "rounds"}
        assert job["urls"]["cancel"] == f"{live.url}/v1/jobs/{job['id']}/cancel"
        routes = {
            "self": "get_job",
            "cancel": "cancel_job",
            "events": "list_job_events",
            "artifacts": "list_artifacts",
            "rounds": "get_rounds",
        }
        for link, route in routes.items():  # each link is the path of its route
            path = live.app.url_path_for(route, job_id=job["id"])
            assert job["urls"][link] == f"{live.url}{path}", link
        assert job["id"] in live.enqueued
        fetched = client.get(job["urls"]["self"]).json()
        assert fetched == job
        listed = client.get("/v1/jobs").json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
        assert listed["has_more"] is False and listed["next_cursor"] is None


def test_pagination_and_filters(live: Any, spec: Spec, expect_problem: ProblemCheck) -> None:
    with live.tenant_client() as client:
        ids = []
        for i in range(3):
            labeled = copy.deepcopy(spec) | {"labels": {"exp": str(i % 2), "team": "a"}}
            ids.append(client.post("/v1/jobs", json=labeled).json()["id"])
        with live.sessions.begin() as session:  # finish them so the cap does not interfere
            for job_id in ids:
                job_store.finish_job(session, job_id, "cancelled")
        ids.append(client.post("/v1/jobs", json=spec).json()["id"])
        seen: list[str] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 3} | ({"after": after} if after else {})
            page = client.get("/v1/jobs", params=params).json()
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = page["next_cursor"]
        assert seen == ids[::-1]
        by_label = client.get("/v1/jobs", params={"label": ["exp:0", "team:a"]}).json()
        assert {j["id"] for j in by_label["data"]} == {ids[0], ids[2]}
        queued = client.get("/v1/jobs", params={"status": "queued"}).json()
        assert [j["id"] for j in queued["data"]] == [ids[3]]
        bad = expect_problem(client.get("/v1/jobs", params={"after": "garbage"}), 422)
        assert bad["errors"][0]["loc"] == "query.after"
        bad = expect_problem(client.get("/v1/jobs", params={"label": "no-colon"}), 422)
        assert bad["errors"][0]["loc"] == "query.label"
        bad = expect_problem(client.get("/v1/jobs", params={"limit": 500}), 422)
        assert bad["errors"][0]["loc"] == "query.limit"
        bad = expect_problem(client.get("/v1/jobs", params={"status": "paused"}), 422)
        assert bad["errors"][0]["loc"] == "query.status[0]"


def test_other_tenants_job_is_a_plain_404(
    live: Any, spec: Spec, expect_problem: ProblemCheck
) -> None:
    with live.tenant_client() as owner, live.tenant_client() as stranger:
        job_id = owner.post("/v1/jobs", json=spec).json()["id"]
        missing_id = "job_" + "0" * 26
        for suffix in ("", "/rounds", "/events", "/artifacts", "/artifacts/ticket.safetensors"):
            theirs = stranger.get(f"/v1/jobs/{job_id}{suffix}")
            missing = stranger.get(f"/v1/jobs/{missing_id}{suffix}")
            a, b = expect_problem(theirs, 404), expect_problem(missing, 404)
            a.pop("instance"), b.pop("instance")
            assert a == b
            assert dict(theirs.headers) | {"content-length": ""} == dict(missing.headers) | {
                "content-length": "",
                "date": theirs.headers["date"],
            }
        expect_problem(stranger.post(f"/v1/jobs/{job_id}/cancel"), 404)
        assert stranger.get("/v1/jobs").json()["data"] == []
        assert owner.get(f"/v1/jobs/{job_id}").status_code == 200


def _first_error(response: httpx.Response, check: ProblemCheck) -> dict[str, Any]:
    body = check(response, 422)
    assert body["type"] == "urn:lth:problem:validation"
    assert len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


@pytest.mark.parametrize(
    ("mutate", "loc", "says"),
    [
        (lambda s: s["model"].update(arch="lenet5"), "model.arch", "lenet_300_100"),
        (lambda s: s["training"].update(steps="300 iterations"), "training.steps", "'500it'"),
        (lambda s: s["pruning"].update(rewindto="0it"), "pruning.rewindto", "rewind_to"),
        (lambda s: s.update(colour="blue"), "colour", "allowed here: model, dataset"),
        (lambda s: s["pruning"].update(rewind_to="300it"), "pruning.rewind_to", "training.steps"),
        (lambda s: s["model"].update(arch="mlp"), "model.hidden_sizes", "needs hidden_sizes"),
        (lambda s: s["training"].update(warmup="900it"), "training.warmup", "longer than"),
        (lambda s: s["training"].update(optimizer="lion"), "training.optimizer", "'adamw'"),
        (lambda s: s["training"].update(milestones=["x"]), "training.milestones[0]", "step"),
        (
            lambda s: s["pruning"].update(controls=["random_reinit"] * 2),
            "pruning.controls",
            "twice",
        ),
        (lambda s: s.pop("model"), "model", "required"),
        (lambda s: s["pruning"].update(rounds=101), "pruning.rounds", "100"),
    ],
)
def test_validation_names_the_exact_field(
    live: Any,
    spec: Spec,
    expect_problem: ProblemCheck,
    mutate: Callable[[Spec], Any],
    loc: str,
    says: str,
) -> None:
    mutate(spec)
    with live.tenant_client() as client:
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
    assert error["loc"] == loc
    assert says in error["msg"]
    assert not error["msg"].startswith("Value error")


def test_service_policy_is_validated_too(
    live: Any, spec: Spec, expect_problem: ProblemCheck
) -> None:
    with live.tenant_client() as client:
        spec["dataset"]["uri"] = "npz:///etc/passwd"
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
        assert (error["loc"], error["type"]) == ("dataset.uri", "path_not_allowed")
        spec["dataset"]["uri"] = "npz:///usr/share/datasets/../../etc/passwd"
        assert _first_error(client.post("/v1/jobs", json=spec), expect_problem)["loc"] == (
            "dataset.uri"
        )
        for nul in ("idx:///usr/share/datasets/%00x", "idx:///usr/share/datasets/\x00x"):
            spec["dataset"]["uri"] = nul
            error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
            assert error["loc"] == "dataset.uri" and "NUL" in error["msg"]
        spec["dataset"]["uri"] = "idx:///usr/share/datasets/fashion-mnist"
        spec["model"]["weights"] = "/usr/share/datasets/w\x00.safetensors"
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
        assert error["loc"] == "model.weights" and "NUL" in error["msg"]
        del spec["model"]["weights"]
        spec["dataset"]["uri"] = "dataset://ds_00000000000000000000000000"
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
        assert (error["loc"], error["type"]) == ("dataset.uri", "unknown_dataset")
        spec["dataset"] = {"uri": "synthetic://?classes=10&shape=1,28,28&train=200&test=50"}
        spec["dataset"]["validation_size"] = 0
        spec["training"]["steps"] = "5000000it"
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
        assert (error["loc"], error["type"]) == ("training.steps", "too_long")
        body = expect_problem(
            client.post(
                "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
        )
        assert body["errors"][0]["loc"] == "" and "JSON" in body["errors"][0]["msg"]


def test_idempotency_key(live: Any, spec: Spec, expect_problem: ProblemCheck) -> None:
    with live.tenant_client() as client:
        headers = {"Idempotency-Key": "submit-1"}
        first = client.post("/v1/jobs", json=spec, headers=headers)
        # Same body with keys in another order: the same request.
        reordered = json.loads(json.dumps(spec, sort_keys=True))
        again = client.post("/v1/jobs", json=reordered, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert live.enqueued.count(first.json()["id"]) == 1
        spec["seed"] = 1
        conflict = expect_problem(client.post("/v1/jobs", json=spec, headers=headers), 409)
        assert conflict["type"] == "urn:lth:problem:idempotency-key-reused"
        assert (
            client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "submit-2"}).json()["id"]
            != first.json()["id"]
        )


def test_concurrency_cap(live: Any, spec: Spec, expect_problem: ProblemCheck) -> None:
    limit = live.settings.max_concurrent_jobs_per_tenant
    with live.tenant_client() as client, live.tenant_client() as other:
        ids = [client.post("/v1/jobs", json=spec).json()["id"] for _ in range(limit)]
        refused = client.post("/v1/jobs", json=spec)
        assert refused.headers["retry-after"] == "30"
        body = expect_problem(refused, 429)
        assert body["type"] == "urn:lth:problem:too-many-active-jobs" and body["limit"] == limit
        assert other.post("/v1/jobs", json=spec).status_code == 202  # caps are per tenant
        assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 200
        assert client.post("/v1/jobs", json=spec).status_code == 202


def test_cancel(live: Any, spec: Spec, expect_problem: ProblemCheck) -> None:
    with live.tenant_client() as client:
        queued = client.post("/v1/jobs", json=spec).json()
        running = client.post("/v1/jobs", json=spec).json()
        with live.sessions.begin() as session:
            assert job_store.claim_job(session, running["id"], "w1").claimed
        cancelled = client.post(queued["urls"]["cancel"])
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        requested = client.post(running["urls"]["cancel"]).json()
        assert (requested["status"], requested["cancel_requested"]) == ("running", True)
        with live.sessions.begin() as session:
            beat = job_store.heartbeat(session, running["id"], attempt=1)
            assert beat.cancel_requested
            job_store.finish_job(session, running["id"], "cancelled", attempt=1)
        body = expect_problem(client.post(running["urls"]["cancel"]), 409)
        assert body["type"] == "urn:lth:problem:job-finished"
        expect_problem(client.post(queued["urls"]["cancel"]), 409)


def test_rounds(live: Any, spec: Spec) -> None:
    round0 = {
        "round": 0,
        "density": 1.0,
        "remaining_weights": 266200,
        "prunable_weights": 266200,
        "layer_density": {"fc1.weight": 1.0},
        "ticket": {
            "variant": "ticket",
            "final_test_accuracy": 0.88,
            "final_test_loss": 0.33,
            "early_stop_step": 200,
            "early_stop_test_accuracy": 0.87,
            "early_stop_val_accuracy": 0.86,
            "min_val_loss": 0.35,
            "accuracy": 0.87,
            "selection_accuracy": 0.86,
            "train_steps": 300,
            "wall_time_s": 1.5,
            "curve": [{"step": 100, "test_loss": 0.5, "test_accuracy": 0.8}],
        },
    }
    with live.tenant_client() as client:
        job = client.post("/v1/jobs", json=spec).json()
        assert client.get(job["urls"]["rounds"]).json() == []
        folder = live.settings.artifact_root / job["id"]
        folder.mkdir()
        (folder / "rounds.json").write_text(json.dumps([round0]))
        rounds = client.get(job["urls"]["rounds"]).json()
        assert len(rounds) == 1 and rounds[0]["ticket"]["accuracy"] == 0.87
        assert rounds[0]["controls"] == {}


def test_progress_result_and_error_are_shown(live: Any, spec: Spec) -> None:
    from api_schemas.jobs import JobError, JobResult, Progress

    with live.tenant_client() as client:
        ok, bad = (client.post("/v1/jobs", json=spec).json()["id"] for _ in range(2))
        with live.sessions.begin() as session:
            for job_id in (ok, bad):
                job_store.claim_job(session, job_id, "w1")
            progress = Progress(round=1, rounds_total=3, step=10, steps_total=300, fraction=0.5)
            job_store.heartbeat(session, ok, attempt=1, progress=progress)
        running = client.get(f"/v1/jobs/{ok}").json()
        assert running["progress"]["fraction"] == 0.5 and running["started_at"]
        result = JobResult(
            ticket_round=2,
            ticket_density=0.64,
            ticket_accuracy=0.88,
            dense_accuracy=0.885,
            rounds_completed=2,
            stop_reason="rounds",
        )
        with live.sessions.begin() as session:
            job_store.finish_job(session, ok, "succeeded", result=result)
            job_store.finish_job(
                session, bad, "failed", error=JobError(code="dataset", message="no such file")
            )
        done = client.get(f"/v1/jobs/{ok}").json()
        assert done["status"] == "succeeded" and done["result"] == result.model_dump()
        failed = client.get(f"/v1/jobs/{bad}").json()
        assert failed["error"] == {"code": "dataset", "message": "no such file"}
        assert failed["finished_at"] is not None


def test_enqueue_failure_keeps_the_job_queued(service_factory: Any, spec: Spec) -> None:
    def broken(job_id: str, device: str) -> None:
        raise ConnectionError("broker down")

    live = service_factory(enqueue=broken)
    with live.tenant_client() as client:
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 202
        job_id = response.json()["id"]
        events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
        assert [e["type"] for e in events] == ["state", "warning"]
        assert "ConnectionError" in events[1]["data"]["message"]


def test_unknown_route_and_method_are_problems(live: Any, expect_problem: ProblemCheck) -> None:
    with live.tenant_client() as client:
        expect_problem(client.get("/v1/nothing"), 404)
        response = client.delete("/v1/jobs")
        expect_problem(response, 405)
        assert response.headers["allow"]


@pytest.mark.parametrize(
    ("dataset", "training", "pruning", "loc", "says"),
    [
        (
            {"uri": "synthetic://?train=300", "validation_size": 300},
            {},
            {},
            "dataset.validation_size",
            "holds out 300 of the 300",
        ),
        (
            {"uri": "synthetic://?train=300", "validation_size": 100},
            {"batch_size": 250},
            {},
            "training.batch_size",
            "200 training examples left",
        ),
        (
            {"uri": "torchvision://FashionMNIST", "validation_size": 5000},
            {"steps": "300it"},
            {"rewind_to": "1ep"},  # 55,000 / 60 = 916 iterations per epoch
            "pruning.rewind_to",
            "916 iterations",
        ),
        (
            {"uri": "torchvision://CIFAR10", "validation_size": 0},
            {"steps": "2000ep"},  # 833 iterations an epoch, 5 trainings: 8.3M iterations
            {},
            "training.steps",
            "allows at most",
        ),
    ],
)
def test_lengths_are_checked_against_the_dataset_size(
    live: Any,
    spec: Spec,
    expect_problem: ProblemCheck,
    dataset: dict[str, Any],
    training: dict[str, Any],
    pruning: dict[str, Any],
    loc: str,
    says: str,
) -> None:
    spec["dataset"] = dataset
    spec["training"] |= training
    spec["pruning"] |= pruning
    with live.tenant_client() as client:
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
    assert error["loc"] == loc and says in error["msg"], error


def test_idx_header_gives_the_size(
    live: Any, spec: Spec, expect_problem: ProblemCheck, fashion_mnist_dir: Any
) -> None:
    spec["dataset"] = {"uri": f"idx://{fashion_mnist_dir}", "validation_size": 60000}
    with live.tenant_client() as client:
        error = _first_error(client.post("/v1/jobs", json=spec), expect_problem)
    assert error["loc"] == "dataset.validation_size" and "of the 60000" in error["msg"]
