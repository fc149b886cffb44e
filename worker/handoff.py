"""A worker asked to stop (SIGTERM: ``docker stop``, systemd, a scale-down) hands its running
jobs back to the queue instead of holding the shutdown hostage or dying mid-round.

Celery's warm shutdown waits for running tasks to end, and a pruning job may run for hours. So
the parent forwards the SIGTERM to its pool processes, and the process running a job catches it
while the job runs: the engine stops at its next poll (it has checkpoints to resume from), and
the job runner releases the job to the queue for any worker to resume.

An idle pool process ignores SIGTERM (as Celery's own ``REMAP_SIGTERM`` mode has it) and leaves
when the parent's shutdown tells it to; from the start of a task SIGTERM counts again. Idle, it
waits on the pool's task queue holding that queue's lock; killed there (by a forwarded signal,
or by ``kill`` of the whole process group as systemd and ``docker stop`` of an ``lth serve``
container do), it would leave the lock taken, and the parent's shutdown would wait on it until
something SIGKILLed it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down

log = logging.getLogger(__name__)


@contextmanager
def sigterm_requested() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGTERM sets a flag instead of ending the process; yields the
    check. Only the main thread can take signals; elsewhere (a thread pool, tests) the check
    stays False and SIGTERM keeps whatever handler it had."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def _on_sigterm(_signum: int, _frame: object) -> None:
        requested.set()

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
        if requested.is_set():
            log.info("SIGTERM received while running a job: the job was handed back")


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _ignore_sigterm_while_idle(**_: Any) -> None:
    """In a new pool process: SIGTERM means nothing until a job runs (see the module)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def sigterm_ends_the_task() -> Iterator[None]:
    """Around a task: SIGTERM ends the process again (until ``sigterm_requested`` turns it into
    a hand-back), so a worker stopping while the job's process still imports the engine does
    not wait for the whole job (it is redelivered). Ignored again once the task returns: the
    process then goes back to the pool's queue, where it must not die holding its lock."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _forward_to_pool(sig: str | None = None, **_: Any) -> None:
    """In the Celery parent: tell each pool process that the worker is stopping (those running
    a job hand it back; idle ones ignore it). A second SIGTERM (or SIGQUIT) is still Celery's
    cold shutdown."""
    import billiard

    for child in billiard.active_children():
        pid = child.pid
        if pid is not None and pid != os.getpid():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    log.info("worker stopping (%s): running jobs are handed back to the queue", sig)
