"""The API under load, on loopback: many clients polling while jobs train, then a burst of
submissions, against a real ``lth serve`` on PostgreSQL and Redis.

1. Two LeNet-300-100 jobs train on real Fashion-MNIST (the worker's two slots busy);
2. ``--clients`` asyncio clients each poll ``GET /v1/jobs/{id}`` and list ``GET /v1/jobs`` in
   turn, every ``--interval`` seconds as the SDK's ``wait`` does, for ``--seconds``: every
   answer must be 200, and the p99 latency of the polls is the figure (target < 50 ms);
3. ``--burst`` submissions at once (each with its own Idempotency-Key, retried once on a
   transport error as a client would): every one must be accepted, and afterwards the job list
   must hold each submitted job exactly once, queued, running or finished.

The load generator runs on the same machine as the service and its training jobs, so on two
cores it competes with both: the figures are for the whole machine under load.

Run: ``python -m bench.load [--clients 200] [--seconds 60] [--interval 1] [--burst 1000]
[--auth]``. Results: ``bench/results/load.json``; with ``--auth`` (API keys, as in production
rather than the embedded open mode), ``bench/results/load-auth.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import lenet_spec, write_result
from bench.local_service import LocalService

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/13"
P99_TARGET_MS = 50.0
#: What the burst submits: small, so that a worker would finish any it got to quickly.
BURST_SPEC = {
    "model": {"arch": "mlp", "hidden_sizes": [16]},
    "dataset": {
        "uri": "synthetic://?classes=3&shape=1,4,4&train=200&test=20",
        "validation_size": 20,
    },
    "training": {"steps": "10it", "batch_size": 10, "eval_every": "10it"},
    "pruning": {"rounds": 1},
    "reuse": False,
}


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A PostgreSQL schema of the run's own, dropped afterwards; yields its URL."""
    name = f"load_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{url}?options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in the load generator while it measures: a full collection of
    its 200 clients' objects would stall them all, and the stall would count as the server's
    latency. (The service freezes its start-up objects for the same reason; see ``lth serve``.)"""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def independent_clients(url: str, count: int, headers: dict[str, str]) -> list[httpx.AsyncClient]:
    """``count`` clients with a connection each, as separate SDK users have. One shared pool
    would measure the generator instead: httpx scans every queued request against every
    connection on each change, and with hundreds of each that starved its event loop for so
    long that the server closed connections it was about to reuse."""
    tls = httpx.create_ssl_context()  # unused on plain HTTP; built once, not once per client
    return [
        httpx.AsyncClient(base_url=url, timeout=60, verify=tls, headers=headers)
        for _ in range(count)
    ]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def poll(
    url: str,
    headers: dict[str, str],
    job_ids: list[str],
    seconds: float,
    clients: int,
    interval: float,
) -> dict[str, Any]:
    """``clients`` loops, each alternating a job's GET and a list and sleeping ``interval``
    after each answer (as the SDK's ``wait`` does), until the time is up, each on its own
    connection. Their first requests are spread over one interval, as clients that started at
    different times would be."""
    polls: list[float] = []
    lists: list[float] = []
    errors: Counter[str] = Counter()
    sessions = independent_clients(url, clients, headers)
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        turn = index
        await asyncio.sleep(interval * index / clients)
        async with sessions[index] as client:
            while time.monotonic() < deadline:
                path = f"/v1/jobs/{job_ids[turn % len(job_ids)]}" if turn % 2 == 0 else "/v1/jobs"
                started = time.perf_counter()
                try:
                    response = await client.get(path)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - started
                if status != "200":
                    errors[status] += 1
                (polls if turn % 2 == 0 else lists).append(elapsed)
                turn += 1
                await asyncio.sleep(interval)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {
        "requests": len(polls) + len(lists),
        "errors": dict(errors),
        "poll_p50_ms": 1000 * percentile(polls, 0.50),
        "poll_p99_ms": 1000 * percentile(polls, 0.99),
        "list_p50_ms": 1000 * percentile(lists, 0.50),
        "list_p99_ms": 1000 * percentile(lists, 0.99),
        "requests_per_s": (len(polls) + len(lists)) / seconds,
    }


async def burst(url: str, headers: dict[str, str], count: int) -> dict[str, Any]:
    """``count`` submissions at once, from as many clients; returns the ids accepted and what
    went wrong."""
    errors: Counter[str] = Counter()
    latencies: list[float] = []

    async def submit(client: httpx.AsyncClient) -> str | None:
        key = uuid.uuid4().hex
        async with client:
            for _attempt in range(2):  # a transport error is retried with the same key
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/jobs", json=BURST_SPEC, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code == 202:
                    job_id: str = response.json()["id"]
                    return job_id
                errors[str(response.status_code)] += 1
                return None
        return None

    started = time.perf_counter()
    ids = await asyncio.gather(*(submit(c) for c in independent_clients(url, count, headers)))
    return {
        "ids": [i for i in ids if i is not None],
        "errors": dict(errors),
        "seconds": time.perf_counter() - started,
        "submit_p99_ms": 1000 * percentile(latencies, 0.99),
    }


async def listed_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every job of the tenant, through the cursor pages."""
    jobs: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
        page = (await client.get("/v1/jobs", params=params)).json()
        jobs += page["data"]
        after = page.get("next_cursor")
        if not page.get("has_more") or not after:
            return jobs


async def wait_running(client: httpx.AsyncClient, job_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [(await client.get(f"/v1/jobs/{j}")).json()["status"] for j in job_ids]
        if all(s == "running" for s in statuses):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the training jobs are not running after {timeout:.0f} s")


async def measure(
    url: str, headers: dict[str, str], clients: int, seconds: float, interval: float, count: int
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
        training = []
        for seed in (0, 1):
            spec = lenet_spec(steps=50_000, rounds=2, controls=[], seed=seed)
            training.append((await client.post("/v1/jobs", json=spec)).json()["id"])
        await wait_running(client, training, timeout=180)
        with collector_paused():
            polled = await poll(url, headers, training, seconds, clients, interval)
        burst_result = await burst(url, headers, count)
        jobs = await listed_jobs(client)
        for job_id in training:
            await client.post(f"/v1/jobs/{job_id}/cancel")
    listed = Counter(job["id"] for job in jobs)
    submitted = burst_result.pop("ids")
    statuses = Counter(job["status"] for job in jobs if job["id"] in set(submitted))
    return {
        "polling": polled,
        "burst": burst_result
        | {
            "submitted": count,
            "accepted": len(submitted),
            "listed_once": sum(1 for i in submitted if listed[i] == 1),
            "duplicates": sum(n - 1 for n in listed.values() if n > 1),
            "statuses": dict(statuses),
        },
    }


def api_key(database_url: str) -> str:
    """A new API key of a tenant of the benchmark's own, straight from the store."""
    from store.db import make_engine, make_sessionmaker
    from store.tenants import create_api_key

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            return create_api_key(session, "load")
    finally:
        engine.dispose()


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    polled, burst_result = result["polling"], result["burst"]
    accounted = (
        burst_result["listed_once"] == burst_result["submitted"] == (burst_result["accepted"])
    )
    return [
        {
            "figure": "p99 latency of GET /v1/jobs/{id} under the polling load (ms)",
            "value": polled["poll_p99_ms"],
            "target": P99_TARGET_MS,
            "comparison": "<",
            "passed": polled["poll_p99_ms"] < P99_TARGET_MS,
        },
        {
            "figure": "errors while polling and in the burst",
            "value": sum(polled["errors"].values()) + sum(burst_result["errors"].values()),
            "target": 0,
            "comparison": "==",
            "passed": not polled["errors"] and not burst_result["errors"],
        },
        {
            "figure": "burst submissions listed exactly once, none duplicated",
            "value": burst_result["listed_once"],
            "target": burst_result["submitted"],
            "comparison": "==",
            "passed": accounted and burst_result["duplicates"] == 0,
        },
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="each client's poll period")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--database-url", default=POSTGRES, help="a PostgreSQL server")
    parser.add_argument("--broker-url", default=REDIS)
    parser.add_argument(
        "--auth", action="store_true", help="with API keys (results in load-auth.json)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)

    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    with fresh_schema(args.database_url) as database_url:
        env = {
            "LTH_DATABASE_URL": database_url,
            "LTH_BROKER_URL": args.broker_url,
            "LTH_MAX_CONCURRENT_JOBS_PER_TENANT": str(args.burst + 10),
            "LTH_WORKER_CONCURRENCY": "2",
            "LTH_AUTH": "enabled" if args.auth else "disabled",
        }
        with LocalService(env=env) as service:
            headers = {"Authorization": f"Bearer {api_key(database_url)}"} if args.auth else {}
            result = asyncio.run(
                measure(service.url, headers, args.clients, args.seconds, args.interval, args.burst)
            )
    redis.Redis.from_url(args.broker_url).flushdb()
    config = {
        "clients": args.clients,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "burst": args.burst,
        "auth": args.auth,
    }
    command = "python -m bench.load" + (" --auth" if args.auth else "")
    out: dict[str, Any] = {"command": command, "config": config}
    out["figures"] = figures(result)
    out |= result
    if not args.no_write:
        print(f"written to {write_result('load-auth' if args.auth else 'load', out)}")
    for figure in out["figures"]:
        verdict = "met" if figure["passed"] else "MISSED"
        print(f"{figure['figure']}: {figure['value']:.4g} (target {figure['target']}) {verdict}")
    polled = result["polling"]
    print(
        f"{polled['requests']} requests in {args.seconds:.0f} s "
        f"({polled['requests_per_s']:.0f}/s); "
        f"poll p50 {polled['poll_p50_ms']:.1f} ms, list p99 {polled['list_p99_ms']:.1f} ms; "
        f"burst of {args.burst} in {result['burst']['seconds']:.1f} s; "
        f"errors: polling {polled['errors']}, burst {result['burst']['errors']}"
    )
    return out


if __name__ == "__main__":
    main()
