"""The ``lth`` client commands as real subprocesses against a real ``lth serve``: their output
(``--json`` parses) and every documented exit code."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lth_client_support import LONG_TRAINING, Server, free_port, run_cli, small_spec

from client.exit_codes import ExitCode

pytestmark = pytest.mark.e2e


def parse(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout of a ``--json`` command: exactly one JSON document."""
    return json.loads(result.stdout)


def test_submit_wait_download_and_inspect(
    server: Server,
    write_spec: Callable[..., Path],
    tmp_path: Path,
    unique_label: dict[str, str],
) -> None:
    spec_file = write_spec(small_spec(labels=unique_label, name="cli"), "spec.yaml")
    key = f"cli-{unique_label['test']}"
    out = tmp_path / "out"
    submitted = server.cli(
        *("submit", str(spec_file), "--wait", "--download", str(out), "--json"),
        *("--idempotency-key", key, "--poll-interval", "0.1"),
    )
    assert submitted.returncode == ExitCode.OK, submitted.stderr
    job = parse(submitted)
    assert job["status"] == "succeeded" and job["labels"] == unique_label
    assert f"Submitted {job['id']}" in submitted.stderr and "succeeded" in submitted.stderr

    again = server.cli("submit", str(spec_file), "--idempotency-key", key, "--json")
    assert again.returncode == 0 and parse(again)["id"] == job["id"]

    one = server.cli(
        *("jobs", "download", job["id"], "--json"),
        *("--dir", str(tmp_path / "one"), "--name", "rounds.json"),
    )
    listing = {a["name"]: a for a in parse(one)}
    assert set(listing) == {"rounds.json"}
    downloaded = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "ticket.safetensors" in downloaded and "rounds/1/mask.safetensors" in downloaded
    with server.client() as client:
        for artifact in client.list_artifacts(job["id"]):
            digest = hashlib.sha256((out / artifact.name).read_bytes()).hexdigest()
            assert digest == artifact.sha256

    shown = server.cli("jobs", "show", job["id"], "--json")
    assert shown.returncode == 0 and parse(shown)["result"] == job["result"]
    human = server.cli("jobs", "show", job["id"])
    assert "succeeded" in human.stdout and "Rounds" in human.stdout

    listed = server.cli("jobs", "list", "--label", f"test={unique_label['test']}", "--json")
    assert [j["id"] for j in parse(listed)] == [job["id"]]
    assert parse(server.cli("jobs", "list", "--status", "queued", "--limit", "1", "--json")) == []

    events = parse(server.cli("jobs", "events", job["id"], "--json"))
    assert events[0]["data"] == {"status": "queued"} and events[-1]["data"]["status"] == (
        "succeeded"
    )
    followed = server.cli("jobs", "events", job["id"], "--follow", "--json")
    assert [json.loads(line) for line in followed.stdout.splitlines()] == events
    plain = server.cli("jobs", "events", job["id"])
    assert plain.stdout.splitlines()[-1].endswith("state status=succeeded")

    waited = server.cli("jobs", "wait", job["id"], "--json")
    assert waited.returncode == 0 and parse(waited)["id"] == job["id"]
    waited_human = server.cli("jobs", "wait", job["id"])
    assert waited_human.returncode == 0 and "Rounds (accuracy" in waited_human.stdout
    assert "succeeded" in waited_human.stderr

    models = server.cli("models", "--json")
    assert models.returncode == 0 and "lenet_300_100" in [m["name"] for m in parse(models)]
    assert "lenet_300_100" in server.cli("models").stdout

    report = server.cli("report", job["id"], "--out", str(tmp_path / "report"), "--json")
    assert report.returncode == 0, report.stderr
    saved = {name: Path(path) for name, path in parse(report).items()}
    assert set(saved) == {"report.html", "report.png"}
    assert saved["report.png"].read_bytes().startswith(b"\x89PNG")
    page = saved["report.html"].read_text()
    assert "<table" in page and "data:image/png;base64," in page
    assert server.cli("report", "job_nope", "--out", str(tmp_path)).returncode == ExitCode.NOT_FOUND


def test_datasets_commands(server: Server, tmp_path: Path) -> None:
    import numpy as np

    file = tmp_path / "tiny.npz"
    rng = np.random.default_rng(1)
    np.savez(
        file,
        x_train=rng.normal(size=(50, 1, 3, 3)),
        y_train=rng.integers(0, 2, 50),
        x_test=rng.normal(size=(20, 1, 3, 3)),
        y_test=rng.integers(0, 2, 20),
    )
    uploaded = server.cli("datasets", "upload", str(file), "--name", "tiny", "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset = parse(uploaded)
    assert dataset["name"] == "tiny" and dataset["uri"] == f"dataset://{dataset['id']}"
    listed = parse(server.cli("datasets", "list", "--json"))
    assert dataset["id"] in [d["id"] for d in listed]
    assert dataset["id"] in server.cli("datasets", "list").stdout
    deleted = server.cli("datasets", "delete", dataset["id"], "--json")
    assert deleted.returncode == 0 and parse(deleted) == {"deleted": dataset["id"]}
    gone = server.cli("datasets", "delete", dataset["id"])
    assert gone.returncode == ExitCode.NOT_FOUND


def test_failed_job_exits_1(server: Server, write_spec: Callable[..., Path]) -> None:
    spec = small_spec()
    spec["model"] = {"arch": "torchvision:no_such_model"}  # only the worker knows torchvision
    result = server.cli(
        "submit", str(write_spec(spec)), "--wait", "--json", "--poll-interval", "0.1"
    )
    assert result.returncode == ExitCode.JOB_FAILED, result.stderr
    job = parse(result)
    assert job["status"] == "failed" and "no_such_model" in job["error"]["message"]
    assert "failed" in result.stderr


def _wait_until_running(server: Server, label: dict[str, str]) -> str:
    with server.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = list(client.list_jobs(label=label))
            if jobs and jobs[0].status == "running" and jobs[0].progress is not None:
                return jobs[0].id
            time.sleep(0.1)
    raise AssertionError("the job did not start")


def test_cancel_while_waiting_exits_3_and_ctrl_c_exits_130(
    server: Server, write_spec: Callable[..., Path], unique_label: dict[str, str]
) -> None:
    spec = write_spec(small_spec(training=LONG_TRAINING, labels=unique_label))
    submit = server.cli_process("submit", str(spec), "--wait", "--json", "--poll-interval", "0.1")
    try:
        job_id = _wait_until_running(server, unique_label)
        follow = server.cli_process("jobs", "events", job_id, "--follow", "--json")

        waiter = server.cli_process("jobs", "wait", job_id, "--poll-interval", "0.1")
        assert waiter.stderr is not None
        assert job_id in waiter.stderr.readline()  # waiting and showing progress
        waiter.send_signal(signal.SIGINT)
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == ExitCode.INTERRUPTED
        assert f"lth jobs wait {job_id}" in err
        with server.client() as client:
            assert client.get_job(job_id).status == "running", "Ctrl-C leaves the job running"

        cancelled = server.cli("jobs", "cancel", job_id)
        assert cancelled.returncode == 0 and job_id in cancelled.stdout
        out, err = submit.communicate(timeout=60)
        assert submit.returncode == ExitCode.JOB_CANCELLED, err
        assert json.loads(out)["status"] == "cancelled"

        out, _ = follow.communicate(timeout=30)
        assert follow.returncode == 0
        streamed = [json.loads(line) for line in out.splitlines()]
        assert streamed[-1]["data"]["status"] == "cancelled"
        assert "progress" in {e["type"] for e in streamed}

        again = server.cli("jobs", "cancel", job_id, "--json")
        assert again.returncode == ExitCode.API_ERROR  # 409: already finished
        assert parse(again)["error"]["status"] == 409
    finally:
        submit.kill()


def test_exit_codes_for_errors(
    server: Server, auth_server: Server, write_spec: Callable[..., Path]
) -> None:
    unreachable = run_cli("jobs", "list", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == ExitCode.UNREACHABLE
    assert "cannot reach" in unreachable.stderr

    no_key = auth_server.cli("jobs", "list")
    assert no_key.returncode == ExitCode.AUTH and "401" in no_key.stderr
    bad_key = auth_server.cli("models", "--json", api_key="lth_wrong")
    assert bad_key.returncode == ExitCode.AUTH and parse(bad_key)["error"]["status"] == 401
    good_key = auth_server.cli("models", "--json", api_key=auth_server.keys["bob"])
    assert good_key.returncode == ExitCode.OK

    missing = server.cli("jobs", "show", "job_00000000000000000000000000", "--json")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert parse(missing)["error"]["status"] == 404
    assert server.cli("jobs", "wait", "job_nope").returncode == ExitCode.NOT_FOUND

    assert server.cli("jobs", "show").returncode == ExitCode.USAGE  # missing argument
    assert server.cli("jobs", "list", "--label", "novalue").returncode == ExitCode.USAGE
    assert server.cli("submit", "no-such-file.json").returncode == ExitCode.USAGE

    bad_spec: dict[str, Any] = {
        "model": {"arch": "mlpx"},
        "dataset": {"uri": "nope://x"},
        "training": {"steps": "10it", "eval_every": "20it"},
    }
    invalid = server.cli("submit", str(write_spec(bad_spec, "bad.yaml")))
    assert invalid.returncode == ExitCode.USAGE
    for path in ("model.arch", "dataset.uri", "training.eval_every"):
        assert f"  {path}: " in invalid.stderr
    assert invalid.stdout == ""

    outside = small_spec()
    outside["dataset"] = {"uri": "npz:///etc/data.npz"}  # valid locally, refused by the server
    refused = server.cli("submit", str(write_spec(outside, "outside.json")))
    assert refused.returncode == ExitCode.USAGE
    assert "  dataset.uri: " in refused.stderr and "data roots" in refused.stderr

    not_json = write_spec(bad_spec, "broken.json")
    not_json.write_text("{not json")
    broken = server.cli("submit", str(not_json))
    assert broken.returncode == ExitCode.USAGE and "not valid JSON" in broken.stderr

    help_text = server.cli("jobs", "wait", "--help").stdout
    assert "Exit codes:" in help_text and "130" in help_text
