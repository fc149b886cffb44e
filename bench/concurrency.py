"""Two jobs on one host against one alone, through the real service: does a second job come free?

Starts ``lth serve`` (SQLite, the embedded broker and its supervised worker) in a fresh temporary
``LTH_HOME`` per phase, and times each phase over HTTP, from submission until every job
succeeded:
- alone: one LeNet-300-100 job on the real Fashion-MNIST with ``LTH_TORCH_THREADS=1`` (one thread
  per job, the old default);
- together: two identical jobs (seeds 0 and 1) submitted at once, with the defaults: a worker slot
  per usable core, the cores shared among the running jobs.

It reports wall(together) / wall(alone); the target is <= 1.15, since the second job runs on cores
that idled while the first ran alone. Take the figures on a quiet machine with >= 2 cores.

Run: ``python -m bench.concurrency [--steps 2000] [--rounds 2]``.
Results: ``bench/results/concurrency.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import FASHION_MNIST, lenet_spec, write_result

LTH = str(Path(sys.executable).parent / "lth")
TARGET = 1.15
TERMINAL = {"succeeded", "failed", "cancelled"}


def spec_for(seed: int, steps: int, rounds: int) -> dict[str, Any]:
    """Every job trains: nothing may come from another job's work."""
    return lenet_spec(
        steps=steps, rounds=rounds, controls=[], checkpoint_every=steps, seed=seed, reuse=False
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def service(home: Path, settings: dict[str, str]) -> Iterator[httpx.Client]:
    """``lth serve`` with its embedded defaults in ``home``, plus ``settings``; a client to it."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTH_")}
    env |= {
        "LTH_HOME": str(home),
        "LTH_HOST": "127.0.0.1",
        "LTH_PORT": str(port),
        "LTH_AUTH": "disabled",
        "LTH_DATA_ROOTS": f"{FASHION_MNIST.parent}:{home / 'datasets'}",
        **settings,
    }
    log = home / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [LTH, "serve"], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, process, log)
            yield client
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lth serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"lth serve not ready after 120 s:\n{log.read_text()[-3000:]}")


def run_together(client: httpx.Client, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Submit ``specs`` at once; the wall time until all succeeded and each job's own run."""
    started = time.perf_counter()
    ids = []
    for spec in specs:
        response = client.post("/v1/jobs", json=spec)
        if response.status_code != 202:
            raise SystemExit(f"submission refused ({response.status_code}): {response.text}")
        ids.append(response.json()["id"])
    while True:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        if all(job["status"] in TERMINAL for job in jobs):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    failed = [job for job in jobs if job["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"a job did not succeed: {failed[0]['status']} {failed[0]['error']}")
    return {"wall_s": wall, "job_run_s": [_run_seconds(job) for job in jobs]}


def _run_seconds(job: dict[str, Any]) -> float:
    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def worker_slots(home: Path) -> int:
    """The slots the supervised worker recorded in the store."""
    from datetime import timedelta

    from store.db import make_engine, make_sessionmaker
    from store.workers import live_slots

    engine = make_engine(f"sqlite:///{home / 'lth.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            return live_slots(session, timedelta(seconds=60))
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=2, help="pruning rounds after the dense one")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")

    with tempfile.TemporaryDirectory() as root:
        alone_home, together_home = Path(root) / "alone", Path(root) / "together"
        alone_home.mkdir()
        together_home.mkdir()
        with service(alone_home, {"LTH_TORCH_THREADS": "1"}) as client:
            alone = run_together(client, [spec_for(0, args.steps, args.rounds)])
        with service(together_home, {}) as client:
            slots = worker_slots(together_home)
            together = run_together(
                client, [spec_for(seed, args.steps, args.rounds) for seed in (0, 1)]
            )
    ratio = together["wall_s"] / alone["wall_s"]
    command = f"python -m bench.concurrency --steps {args.steps} --rounds {args.rounds}"
    path = write_result(
        "concurrency",
        {
            "command": command,
            "config": vars(args) | {"model": "lenet_300_100", "batch_size": 60, "controls": []},
            "usable_cores": len(os.sched_getaffinity(0)),
            "worker_slots": slots,
            "figures": [
                {
                    "figure": "wall(two jobs together, defaults) / wall(one alone, 1 thread)",
                    "ratio": ratio,
                    "comparison": "<=",
                    "target": TARGET,
                    "passed": ratio <= TARGET,
                },
                {
                    "figure": "one job alone, LTH_TORCH_THREADS=1: wall (s)",
                    "value": alone["wall_s"],
                },
                {"figure": "two jobs together, defaults: wall (s)", "value": together["wall_s"]},
            ],
            "alone_torch_threads_1": alone,
            "together_defaults": together,
        },
    )
    print(f"one job alone (1 thread):   {alone['wall_s']:8.1f} s")
    print(f"two jobs together (shared): {together['wall_s']:8.1f} s  ({slots} worker slots)")
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"ratio: {ratio:.3f}  (target <= {TARGET}: {verdict})")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
