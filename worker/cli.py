"""``lth worker``: one Celery worker running as many jobs at once as it has cores to give.

Run one per GPU, each pinned with ``--gpu N`` (``CUDA_VISIBLE_DEVICES``), where it runs one job
at a time; on a machine without GPUs one worker trains on the CPU, one job per usable core, the
jobs sharing the cores between them (``worker.cores``). A GPU worker takes the jobs of the GPU
queue and the shared one, a CPU worker those of the CPU queue and the shared one
(``store.queue``); ``--queue`` chooses otherwise. The parent process never imports torch: each
job runs in a fresh child process.

``lth worker-health`` is a container healthcheck: it asks the job store whether a worker on this
host reported in lately (the same heartbeat /readyz and the reconciler trust).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import click
from pydantic import ValidationError

from worker.cores import usable_cores


def worker_slots(configured: int, gpu: int | None) -> int:
    """Jobs run at once: ``configured`` if > 0, else one per usable core, or one on a GPU."""
    if configured > 0:
        return configured
    return 1 if gpu is not None else usable_cores()


def parse_queue_names(
    _ctx: click.Context | None, _param: click.Parameter | None, value: str | None
) -> list[str] | None:
    """``--queue cpu,any`` as names of ``store.queue.QUEUES``; an unknown one is a usage error
    here rather than a worker that silently waits on a queue nobody sends to."""
    from store.queue import QUEUES

    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter(f"name at least one queue of {', '.join(QUEUES)}")
    for name in names:
        if name not in QUEUES:
            raise click.BadParameter(f"unknown queue {name!r}: choose from {', '.join(QUEUES)}")
    return names


@click.command()
@click.option("--gpu", type=int, default=None, help="Pin to this GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--name", default=None, help="Worker name (default lth-<host>-<pid>[-gpuN]).")
@click.option(
    "--concurrency",
    type=click.IntRange(min=0),
    default=None,
    help="Jobs run at once, one process each (default LTH_WORKER_CONCURRENCY; 0: one per usable "
    "CPU core, or one with --gpu).",
)
@click.option(
    "--queue",
    "queues",
    metavar="NAMES",
    default=None,
    callback=parse_queue_names,
    help="Comma-separated queues to take jobs from: cpu (training.device cpu), gpu (cuda), any "
    "(auto). Default LTH_WORKER_QUEUES, else gpu,any with --gpu and cpu,any without.",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    gpu: int | None,
    name: str | None,
    concurrency: int | None,
    queues: list[str] | None,
    loglevel: str,
) -> None:
    """Start a worker that runs queued jobs (configured by LTH_* variables, as the service)."""
    from store.queue import worker_queues
    from store.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.UsageError(f"invalid configuration: {exc}") from exc
    configured = settings.worker_concurrency if concurrency is None else concurrency
    slots = worker_slots(configured, gpu)
    consumed = worker_queues(queues or settings.worker_queues, gpu=gpu is not None)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    name = name or f"lth-{socket.gethostname()}-{os.getpid()}" + (
        f"-gpu{gpu}" if gpu is not None else ""
    )
    os.environ.setdefault("LTH_WORKER_NAME", name)
    # The jobs' processes read the settings too: they learn the pool size they share cores in.
    os.environ["LTH_WORKER_CONCURRENCY"] = str(slots)

    from worker.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "--pool=prefork",
            f"--concurrency={slots}",
            f"--queues={','.join(consumed)}",
            f"--hostname={name}@%h",
            # The embedded broker has no broadcast; the database tracks workers instead.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


@click.command("worker-health")
@click.option(
    "--within",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds within which the worker must have reported in (it does every 5 s).",
)
def health(within: float) -> None:
    """Exit 0 if a worker on this host has reported in lately, else 1 (a healthcheck)."""
    from sqlalchemy.exc import SQLAlchemyError

    from store.db import make_engine, make_sessionmaker
    from store.settings import Settings
    from store.workers import live_workers

    hostname = socket.gethostname()
    engine = make_engine(Settings().database_url)
    try:
        with make_sessionmaker(engine)() as session:
            seen = live_workers(session, timedelta(seconds=within))
    except SQLAlchemyError as exc:
        raise click.ClickException(f"the job store is unreachable: {exc}") from exc
    finally:
        engine.dispose()
    names = [row.name for row in seen if row.hostname == hostname]
    if not names:
        raise click.ClickException(f"no worker on {hostname} reported in the last {within:g} s")
    click.echo(f"alive: {', '.join(names)}")


def main() -> None:
    worker()
