"""``lth worker``: one Celery worker process running one job at a time.

Run one per GPU, each pinned with ``--gpu N`` (``CUDA_VISIBLE_DEVICES``); on a machine without
GPUs one worker trains on the CPU. The parent process never imports torch: each job runs in a
fresh child process.
"""

from __future__ import annotations

import os
import socket

import click


@click.command()
@click.option("--gpu", type=int, default=None, help="Pin to this GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--name", default=None, help="Worker name (default lth-<host>-<pid>[-gpuN]).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(gpu: int | None, name: str | None, loglevel: str) -> None:
    """Start a worker that runs queued jobs (configured by LTH_* variables, as the service)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    name = name or f"lth-{socket.gethostname()}-{os.getpid()}" + (
        f"-gpu{gpu}" if gpu is not None else ""
    )
    os.environ.setdefault("LTH_WORKER_NAME", name)

    from store.queue import QUEUE
    from worker.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "--pool=prefork",
            "--concurrency=1",
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
