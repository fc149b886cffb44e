"""Training several stacks of a round at once, one CPU thread each ("lanes").

On a CPU, two single-threaded trainings side by side run close to twice as fast as one
training on two threads: a small network's kernels are too short for a second OpenMP thread
to pay for its synchronisation, and a busy neighbour process (the API, a heartbeat) stalls every
barrier of a multi-threaded kernel but only one lane. So when a job owns more than one core and
a round has more than one network to train, the round's networks are split into stacks, one
per core, each on one intra-op thread: as forked processes where the platform allows (see
:mod:`worker.engine.forked`: threads of one process share its GIL, which a small network's
step holds for most of its length), else as the Python threads of :func:`run_lanes`.

Lanes are used only where the result does not depend on them: the built-in architectures
draw no random numbers while training (no dropout), so the shared global RNG is never read
by two lanes, and the split is recorded before training so that a resumed round trains the
same stacks, each on one thread, as the interrupted one did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import torch

from worker.engine.errors import Stopped

T = TypeVar("T")
R = TypeVar("R")


def split_even(items: Sequence[T], parts: int, max_size: int) -> list[list[T]]:
    """``items`` in order, cut into at least ``parts`` runs of near-equal length (the longer
    first), none longer than ``max_size``."""
    count = max(1, min(len(items), max(parts, -(-len(items) // max(max_size, 1)))))
    size, extra = divmod(len(items), count)
    runs, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        runs.append(list(items[start:end]))
        start = end
    return [run for run in runs if run]


@contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op thread for the process while lanes run; the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_lanes(tasks: Sequence[Callable[[Callable[[], bool]], R]], lanes: int) -> list[R]:
    """Run ``tasks`` on ``lanes`` threads, in order of submission; returns their results.

    Each task gets an ``aborted()`` check to pass on as its stop hook: it turns true as soon as
    any task fails (or the caller is interrupted), so the others stop at their next poll,
    keeping their checkpoints. The first real error is raised; ``Stopped`` only when every
    failure was a stop.
    """
    abort = threading.Event()

    def guarded(task: Callable[[Callable[[], bool]], R]) -> R:
        if abort.is_set():
            raise Stopped("stopped before starting: another lane failed")
        return task(abort.is_set)

    with single_threaded(), ThreadPoolExecutor(lanes, thread_name_prefix="lane") as pool:
        futures = [pool.submit(guarded, task) for task in tasks]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                abort.set()
            wait(futures)
        except BaseException:  # e.g. a time limit raised in this thread: stop the lanes too
            abort.set()
            raise
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        real = [e for e in errors if not isinstance(e, Stopped)]
        raise (real or errors)[0]
    return [f.result() for f in futures]
