"""``lth serve`` (the API, plus an embedded worker by default) and ``lth keys``.

``lth serve`` alone is a whole service on one machine: SQLite and the embedded broker under
``LTH_HOME``, the API on ``--host``/``--port``, and a worker it restarts if it dies, running as
many jobs at once as ``lth worker`` would (``LTH_WORKER_CONCURRENCY``; by default one per usable
CPU core, since this worker is pinned to no GPU). With
``LTH_DATABASE_URL``/``LTH_BROKER_URL`` pointing at PostgreSQL and Redis, and ``--no-worker``,
it is the API tier of a deployment whose workers run elsewhere (``lth worker``).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import click

log = logging.getLogger("lth.serve")
#: How long ``lth serve`` waits for its worker to hand its jobs back and exit on shutdown.
STOP_TIMEOUT_S = 30.0


class WorkerSupervisor:
    """Keeps one ``python -m worker`` process alive, restarting it (with backoff) if it dies.

    It is started exactly as ``lth worker`` with no options, from the same environment, so its
    number of slots follows ``LTH_WORKER_CONCURRENCY`` with the same default.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="lth-worker-supervisor", daemon=True
        )
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self.process = subprocess.Popen([sys.executable, "-m", "worker"], env=self.env)
            code = self.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            log.error("worker exited with %s; restarting in %.0f s", code, backoff)
            self.restarts += 1
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the worker did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
                self.process.kill()
        self._thread.join(timeout=5)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM as a clean exit that unwinds the stack. Uvicorn stops serving on SIGTERM and then
    raises the signal again under the handler it found; with the default handler the process
    would die on the spot, before the worker it supervises is stopped (systemd, ``docker stop``
    and ``lth demo`` all stop the service this way)."""
    raise SystemExit(0)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default=None, help="Bind address (default LTH_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default LTH_PORT, 8000).")
@click.option(
    "--worker/--no-worker",
    "with_worker",
    default=True,
    show_default=True,
    help="Also run (and keep alive) a worker on this machine, running LTH_WORKER_CONCURRENCY "
    "jobs at once (default: one per usable CPU core).",
)
def serve(host: str | None, port: int | None, with_worker: bool) -> None:
    """Run the HTTP API (and by default a worker) with settings from LTH_* variables."""
    import uvicorn

    from service.app import create_app
    from service.readiness import worker_check
    from service.report_cache import drop_cached
    from service.state import state_of
    from store.db import make_engine, make_sessionmaker
    from store.queue import CeleryEnqueue, make_celery
    from store.reconcile import Reconciler
    from store.retention import Retention
    from store.settings import Settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    host = host or settings.host
    port = settings.port if port is None else port
    if settings.auth == "disabled" and not _is_loopback(host):
        raise click.UsageError(
            f"LTH_AUTH=disabled serves without authentication and may only bind to localhost, "
            f"not {host}"
        )
    settings.home.mkdir(parents=True, exist_ok=True)
    celery = make_celery(settings.broker_url, settings.home, settings.job_time_limit_s)
    enqueue = CeleryEnqueue(celery)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    app = create_app(
        settings,
        enqueue=enqueue,
        readiness_checks={"worker": worker_check(sessions, timedelta(seconds=30))},
    )

    reconciler = Reconciler(
        sessions,
        enqueue,
        stale_after_s=settings.stale_after_s,
        requeue_queued_after_s=settings.requeue_queued_after_s,
        every_s=settings.reconcile_every_s,
    )
    retention = Retention(  # deletes jobs older than LTH_ARTIFACT_TTL_DAYS, if set
        sessions,
        state_of(app).artifacts,
        ttl_days=settings.artifact_ttl_days,
        on_purged=lambda job_id: drop_cached(settings, job_id),
    )
    worker_env = {**os.environ, "LTH_WORKER_QUEUES": "cpu,gpu,any"}  # one machine: every job
    supervisor = WorkerSupervisor(worker_env) if with_worker else None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # What start-up built (modules, the app and its routes) lives as long as the process: out
    # of the collector's sight, a full collection scans only what requests left behind instead
    # of stalling every request in flight for a hundred milliseconds or more under load.
    gc.collect()
    gc.freeze()
    reconciler.start()
    retention.start()
    if supervisor is not None:
        supervisor.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        reconciler.stop()
        retention.stop()
        if supervisor is not None:
            supervisor.stop()


@click.group()
def keys() -> None:
    """Manage API keys (stored hashed; a key is shown once, at creation)."""


@keys.command("create")
@click.argument("tenant")
def create_key(tenant: str) -> None:
    """Create an API key for TENANT (created if new) and print it."""
    from store.db import make_engine, make_sessionmaker, migrate
    from store.settings import Settings
    from store.tenants import create_api_key

    settings = Settings()
    migrate(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions.begin() as session:
        key = create_api_key(session, tenant)
    click.echo(key)
    click.echo(f"(API key for tenant {tenant!r}; it is not shown again)", err=True)
