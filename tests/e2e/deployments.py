"""Whole deployments as real processes: ``lth serve`` (uvicorn) and ``python -m worker`` (Celery).

Two shapes: the production one (PostgreSQL job store, Redis broker, API and worker as separate
processes) and the embedded default (``lth serve`` alone: SQLite, filesystem broker, a worker it
supervises). Tests talk to them over HTTP only, as users do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

LTH = str(Path(sys.executable).parent / "lth")
TERMINAL = {"succeeded", "failed", "cancelled"}
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

#: A few seconds of real training: 4 classes of 6x6 synthetic images, a small MLP.
SMALL_SPEC: dict[str, Any] = {
    "model": {"arch": "mlp", "hidden_sizes": [64, 32]},
    "dataset": {
        "uri": "synthetic://?classes=4&shape=1,12,12&train=1200&test=300&noise=1.5",
        "validation_size": 200,
    },
    "training": {"steps": "150it", "eval_every": "50it", "batch_size": 20, "lr": 0.003},
    "pruning": {"rounds": 2, "rates": {"linear": 0.5}, "controls": ["random_reinit"]},
    "seed": 1,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Deployment:
    """Running processes of one deployment and the environment they share."""

    url: str
    env: dict[str, str]
    home: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process with the deployment's environment (or ``env`` on top of it)."""
        log = self.home / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*args],
                env=self.env | (env or {}),
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.processes[name], self.logs[name] = process, log
        return process

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.start(
            name, sys.executable, "-m", "worker", "--name", f"{name}-{time.time_ns()}"
        )

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: the Celery parent and the child running the job."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for name, path in self.logs.items()
        )

    def key(self, tenant: str) -> str:
        done = subprocess.run(
            [LTH, "keys", "create", tenant],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        with self.client() as client:
            while time.monotonic() < deadline:
                try:
                    response = client.get("/readyz")
                    if response.status_code == 200:
                        return
                    last = response.text
                except httpx.TransportError as exc:
                    last = str(exc)
                time.sleep(0.3)
        raise AssertionError(f"not ready after {timeout} s: {last}\n{self.log_tail()}")


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {job}")


def wait_for_progress(
    client: httpx.Client, job_id: str, *, round: int, step: int, timeout: float = 120
) -> None:
    """Until the running job reports at least ``step`` in round ``round`` or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = client.get(f"/v1/jobs/{job_id}").json().get("progress") or {}
        if progress.get("round", 0) > round or (
            progress.get("round", 0) == round and progress.get("step", 0) >= step
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach round {round}, step {step}: {progress}")


def base_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTH_")}
    env.update(
        LTH_HOME=str(home),
        LTH_PORT=str(port),
        LTH_HOST="127.0.0.1",
        LTH_DATA_ROOTS=f"/usr/share/datasets:{home / 'datasets'}",
        LTH_HEARTBEAT_SECONDS="0.5",
        LTH_STALE_AFTER_S="6",
        LTH_RECONCILE_EVERY_S="1",
        LTH_REQUEUE_QUEUED_AFTER_S="30",
    )
    return env
