"""Training several stacks at once, one CPU thread each ("lanes").

On a CPU, two single-threaded trainings side by side run close to twice as fast as one
training on two threads: a small network's kernels are too short for a second OpenMP thread
to pay for its synchronisation, and a busy neighbour process (the API, a heartbeat) stalls every
barrier of a multi-threaded kernel but only one lane. So when a job owns more than one core and
a round has more than one network to train, the round's networks are split into stacks, one
per core, each on one intra-op thread: as forked processes where the platform allows (see
:mod:`worker.engine.forked`: threads of one process share its GIL, which a small network's
step holds for most of its length), else as the Python threads of :class:`ThreadLanes`.

Lanes are used only where the result does not depend on them: the built-in architectures
draw no random numbers while training (no dropout), so the shared global RNG is never read
by two lanes, and the split is recorded before training so that a resumed round trains the
same stacks, each on one thread, as the interrupted one did.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch

from worker.engine.errors import Stopped
from worker.engine.hooks import StopFn
from worker.engine.train import ReportFn

T = TypeVar("T")
#: A lane's work: given its report and stop functions, returns JSON data.
Work = Callable[[ReportFn, StopFn], Any]
#: How often a pool looks at its stop check while waiting for its lanes.
POLL_S = 0.05


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


def raise_first(errors: Sequence[BaseException]) -> None:
    """Raise the first real error of ``errors`` (``Stopped`` only when every one is a stop)."""
    if errors:
        real = [e for e in errors if not isinstance(e, Stopped)]
        raise (real or errors)[0]


class LanePool(Protocol):
    """Where stacks train side by side, each on one thread: forked children
    (:class:`worker.engine.forked.ForkedLanes`) or threads (:class:`ThreadLanes`).

    ``start`` runs a work at once, given its report function and a stop check; ``wait``
    blocks until at least one lane ended and returns the results of those that finished. Once
    a lane failed, or the caller's stop check turned true, ``stopping`` is true and every
    running lane stops at its next poll, keeping its checkpoint; when none runs any more,
    ``raise_errors`` raises the first real error (``Stopped`` when every failure was a stop).
    """

    @property
    def running(self) -> int: ...

    @property
    def stopping(self) -> bool: ...

    def start(self, work: Work, report: ReportFn) -> int: ...

    def wait(self) -> list[tuple[int, Any]]: ...

    def raise_errors(self) -> None: ...


class ThreadLanes:
    """Lanes as threads of this process (where forking is not available), one intra-op thread
    for the whole process while the pool is open."""

    def __init__(self, should_stop: StopFn | None) -> None:
        self._should_stop = should_stop
        self._abort = threading.Event()
        self._ended: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        self._threads: dict[int, threading.Thread] = {}
        self._errors: list[BaseException] = []
        self._handles = 0
        self._threads_before = 0

    def __enter__(self) -> ThreadLanes:
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._abort.set()  # a no-op unless left early: then the lanes stop at their next poll
        for thread in self._threads.values():
            thread.join()
        torch.set_num_threads(self._threads_before)

    @property
    def running(self) -> int:
        return len(self._threads)

    @property
    def stopping(self) -> bool:
        return self._abort.is_set()

    def start(self, work: Work, report: ReportFn) -> int:
        handle, self._handles = self._handles, self._handles + 1

        def lane() -> None:
            try:
                self._ended.put((handle, work(report, self._stop), None))
            except BaseException as error:  # handed to the caller's thread
                self._ended.put((handle, None, error))

        thread = threading.Thread(target=lane, name=f"lane-{handle}", daemon=True)
        self._threads[handle] = thread
        thread.start()
        return handle

    def wait(self) -> list[tuple[int, Any]]:
        finished: list[tuple[int, Any]] = []
        while self._threads and not finished:
            try:
                ended = [self._ended.get(timeout=POLL_S)]
            except queue.Empty:
                ended = []
            while not self._ended.empty():
                ended.append(self._ended.get())
            for handle, result, error in ended:
                self._threads.pop(handle).join()
                if error is None:
                    finished.append((handle, result))
                else:
                    self._errors.append(error)
                    self._abort.set()
            if self._should_stop is not None and self._should_stop():
                self._abort.set()
        return finished

    def raise_errors(self) -> None:
        raise_first(self._errors)

    def _stop(self) -> bool:
        return self._abort.is_set() or (self._should_stop is not None and self._should_stop())
