"""The job queue: how the edge and the reconciler hand a job id to the workers.

Both sides build their Celery app from this one configuration, so the producer and the consumer
can never disagree on serializer, queue or broker options. Producers send the task by name and
never import the worker package (nor torch). The message carries only the job id: the database
is the source of truth for everything else.

Without ``broker_url`` the broker is embedded: kombu's filesystem transport under
``<home>/broker``, no server needed. It does not redeliver a message whose worker died; the
reconciler (``store.reconcile``) re-enqueues such jobs from the database instead.

Jobs are routed by ``training.device`` (:func:`queue_for`): ``cuda`` to the GPU queue, ``cpu``
to the CPU queue, ``auto`` to the queue every worker consumes, so a job waits for a worker able
to run it. Messages still in the single ``lth.jobs`` queue of earlier versions are consumed by
no one after an upgrade; the reconciler sends those jobs again, routed, once they have been
queued for ``LTH_REQUEUE_QUEUED_AFTER_S`` and a live worker has a free slot (running ones once
their heartbeat is stale).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery

TASK_NAME = "lth.run_job"
CPU_QUEUE = "lth.cpu"
GPU_QUEUE = "lth.gpu"
ANY_QUEUE = "lth.any"
#: The names ``lth worker --queue`` and ``LTH_WORKER_QUEUES`` take, and the queues they mean.
QUEUES: dict[str, str] = {"cpu": CPU_QUEUE, "gpu": GPU_QUEUE, "any": ANY_QUEUE}
_DEVICE_QUEUES = {"cpu": CPU_QUEUE, "cuda": GPU_QUEUE, "auto": ANY_QUEUE}


def queue_for(device: str) -> str:
    """The queue of a job with this ``training.device``: only workers that can run it take it."""
    try:
        return _DEVICE_QUEUES[device]
    except KeyError:
        raise ValueError(f"unknown training.device {device!r}") from None


def worker_queues(names: Sequence[str], *, gpu: bool) -> list[str]:
    """The queues a worker consumes: ``names`` (keys of :data:`QUEUES`) if any, else its own
    kind's queue and the shared one (``gpu,any`` for a GPU worker, ``cpu,any`` otherwise)."""
    unknown = [name for name in names if name not in QUEUES]
    if unknown:
        raise ValueError(f"unknown queue {unknown[0]!r}: choose from {', '.join(QUEUES)}")
    chosen = list(dict.fromkeys(names)) or ["gpu" if gpu else "cpu", "any"]
    return [QUEUES[name] for name in chosen]


def broker_options(broker_url: str | None, home: Path, job_time_limit_s: int) -> dict[str, Any]:
    """Celery settings for long GPU jobs (see the README's deployment notes)."""
    options: dict[str, Any] = {
        "broker_url": broker_url or "filesystem://",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],  # never pickle
        "task_ignore_result": True,  # the database holds job state, not a result backend
        "task_acks_late": True,  # a worker crash re-queues the job (Redis, AMQP)
        "task_reject_on_worker_lost": True,  # safe: claims are compare-and-set with attempts
        "worker_prefetch_multiplier": 1,  # long tasks: take one at a time
        "worker_max_tasks_per_child": 1,  # a fresh process (and CUDA context) per job
        "task_soft_time_limit": job_time_limit_s,
        "task_time_limit": job_time_limit_s + 300,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Producers always name the job's queue; a task sent without one is any worker's.
        "task_default_queue": ANY_QUEUE,
        "task_routes": {TASK_NAME: {"queue": ANY_QUEUE}},
        "worker_hijack_root_logger": False,
    }
    if broker_url is None:
        folder = home / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The folder is listed this often (kombu's default: every second), so a job posted
            # to an idle embedded worker starts within a fifth of a second.
            "polling_interval": 0.2,
        }
    elif not broker_url.startswith(("amqp", "pyamqp")):
        # Redis redelivers an unacknowledged task after this long: keep it above any job.
        # (RabbitMQ holds it for as long as the connection lives; its server-side
        # consumer_timeout must exceed a job instead: see the README.)
        options["broker_transport_options"] = {"visibility_timeout": 2 * job_time_limit_s}
    return options


def make_celery(broker_url: str | None, home: Path, job_time_limit_s: int) -> Celery:
    app = Celery("lth")
    app.conf.update(broker_options(broker_url, home, job_time_limit_s))
    return app


class CeleryEnqueue:
    """``enqueue(job_id, device)`` for the HTTP edge, the reconciler and a worker handing a job
    back: sends the task by name to the queue of the job's ``training.device``."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, job_id: str, device: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], queue=queue_for(device))
