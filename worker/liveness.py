"""A worker process announces itself in the store while it runs: for /readyz, for operators,
and with its number of slots (jobs at once) for the reconciler.

Runs in the Celery parent process (which never imports torch), on a daemon thread started when
the worker is ready and stopped at shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from store.db import make_engine, make_sessionmaker
from store.settings import Settings
from store.workers import worker_seen, worker_stopped

log = logging.getLogger(__name__)
EVERY_S = 5.0
#: After a failed write, the first retry comes this soon (doubling up to ``EVERY_S``): a worker
#: started beside an API that is still migrating the database reports in as soon as it can.
RETRY_FIRST_S = 0.2

_stop = threading.Event()


def _device() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"cuda (CUDA_VISIBLE_DEVICES={visible})" if visible else "auto"


def _pool_size(consumer: Any, settings: Settings) -> int:
    """Jobs the worker runs at once, as its Celery pool was sized (else as configured)."""
    size = getattr(getattr(consumer, "controller", None), "concurrency", None)
    if isinstance(size, int) and size > 0:
        return size
    return max(settings.worker_concurrency, 1)


def _loop(settings: Settings, name: str, concurrency: int) -> None:
    engine = make_engine(
        settings.database_url,
        idle_in_transaction_timeout_s=settings.worker_transaction_timeout_s,
    )
    sessions = make_sessionmaker(engine)
    hostname, pid = socket.gethostname(), os.getpid()
    retry_s = RETRY_FIRST_S
    while True:
        wait_s = EVERY_S
        try:
            with sessions.begin() as session:
                worker_seen(
                    session,
                    name,
                    hostname=hostname,
                    pid=pid,
                    device=_device(),
                    concurrency=concurrency,
                )
            retry_s = RETRY_FIRST_S
        except Exception:  # the database may be away for a moment (or not migrated yet)
            log.warning("could not record worker liveness", exc_info=True)
            wait_s, retry_s = retry_s, min(2 * retry_s, EVERY_S)
        if _stop.wait(wait_s):
            break
    try:
        with sessions.begin() as session:
            worker_stopped(session, name)
    except Exception:
        log.warning("could not record worker shutdown", exc_info=True)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start(sender: Any = None, **_: Any) -> None:
    from worker.celery_app import settings

    name = settings.worker_name or str(getattr(sender, "hostname", None) or socket.gethostname())
    slots = _pool_size(sender, settings)
    threading.Thread(
        target=_loop, args=(settings, name, slots), name="lth-liveness", daemon=True
    ).start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown(**_: Any) -> None:
    _stop.set()
