"""``lth worker``: one Celery worker running as many jobs at once as it has cores to give.

Run one per GPU, each pinned with ``--gpu N`` (``CUDA_VISIBLE_DEVICES``), where it runs one job
at a time; on a machine without GPUs one worker trains on the CPU, one job per usable core, the
jobs sharing the cores between them (``worker.cores``). The parent process never imports torch:
each job runs in a fresh child process.
"""

from __future__ import annotations

import os
import socket

import click
from pydantic import ValidationError

from worker.cores import usable_cores


def worker_slots(configured: int, gpu: int | None) -> int:
    """Jobs run at once: ``configured`` if > 0, else one per usable core, or one on a GPU."""
    if configured > 0:
        return configured
    return 1 if gpu is not None else usable_cores()


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
@click.option("--loglevel", default="INFO", show_default=True)
def worker(gpu: int | None, name: str | None, concurrency: int | None, loglevel: str) -> None:
    """Start a worker that runs queued jobs (configured by LTH_* variables, as the service)."""
    from store.settings import Settings

    try:
        configured = Settings().worker_concurrency if concurrency is None else concurrency
    except ValidationError as exc:
        raise click.UsageError(f"invalid configuration: {exc}") from exc
    slots = worker_slots(configured, gpu)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    name = name or f"lth-{socket.gethostname()}-{os.getpid()}" + (
        f"-gpu{gpu}" if gpu is not None else ""
    )
    os.environ.setdefault("LTH_WORKER_NAME", name)
    # The jobs' processes read the settings too: they learn the pool size they share cores in.
    os.environ["LTH_WORKER_CONCURRENCY"] = str(slots)

    from store.queue import QUEUE
    from worker.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "--pool=prefork",
            f"--concurrency={slots}",
            f"--queues={QUEUE}",
            f"--hostname={name}@%h",
            # The embedded broker has no broadcast; the database tracks workers instead.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def main() -> None:
    worker()
