"""The workers' Celery app: ``celery -A worker.celery_app worker`` (or ``lth worker``).

Configuration comes from ``store.queue`` (shared with the producers) and ``LTH_*`` settings.
This module imports neither torch nor the engine: the prefork parent stays free of CUDA, and each
job runs in a fresh child (``worker_max_tasks_per_child = 1``) that imports torch itself.
"""

from __future__ import annotations

from store.queue import make_celery
from store.settings import Settings

settings = Settings()
celery_app = make_celery(settings.broker_url, settings.home, settings.job_time_limit_s)
celery_app.conf.include = ["worker.tasks"]

import worker.handoff  # noqa: E402  (hands running jobs back on SIGTERM)
import worker.liveness  # noqa: E402, F401  (connects the liveness signals)
