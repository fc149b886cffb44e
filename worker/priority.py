"""The CPU priority of a job's process: training takes the CPU time nothing else wants.

A job's process lowers itself before it trains (``worker_max_tasks_per_child = 1``: it runs this
one job, so nothing else of the worker is slowed). Niceness alone is not enough beside the API on
a small machine: the scheduler lets a niced trainer finish its time slice before a request that
just woke up runs, and a request wakes several times (thread pool, database), so under load the
waits add up in the API's latency. ``SCHED_IDLE`` (Linux) trains only when no
other process wants the core, and any other wake-up preempts it at once; on a machine of its own
the job still gets every core. The job's bookkeeping thread (heartbeats, progress, publishing)
asks for the normal policy back, at the job's niceness: missing heartbeats on a busy machine
would make the job look lost.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def lower_for_training(niceness: int, *, sched_idle: bool) -> None:
    """In the job's main thread, before it starts others (they inherit it): ``niceness`` (never
    raising the priority it has) and, if ``sched_idle`` and the platform has it, SCHED_IDLE."""
    current = os.nice(0)
    if current < niceness:
        os.nice(niceness - current)
    if sched_idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a sandbox may refuse; niceness still applies
            log.warning("could not train under SCHED_IDLE (%s); niceness only", exc)


def restore_for_bookkeeping() -> None:
    """In a thread of the job that must run on time: back to the normal policy (the niceness
    it inherited stays). A process without the right keeps SCHED_IDLE, and says so."""
    if not hasattr(os, "SCHED_IDLE") or os.sched_getscheduler(0) != os.SCHED_IDLE:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as exc:
        log.warning("heartbeats stay under SCHED_IDLE (%s)", exc)
