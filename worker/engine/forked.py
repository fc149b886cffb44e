"""Lanes as forked processes: each stack trains in a child of this process.

Two lanes that are threads of one process share its GIL, and a small network's step holds it
for most of its length (the operator calls between the short kernels): two LeNet-300-100 lanes
ran at 530 steps/s each where one alone runs at 720, and two processes at 900 each. A forked
child starts with the prepared stack, the dataset (shared, copy-on-write) and the RNG state of
this process, trains on one thread exactly as a thread lane would, writes its own checkpoints
and trained weights, and sends its progress and outcome back over a pipe as JSON lines; the
parent, which keeps every callback into the caller, relays them. Nothing is pickled.

A child polls a shared stop flag (set when the run must stop or another lane failed) and dies
with its parent (``PR_SET_PDEATHSIG``), so a killed worker leaves no lane writing behind it.
Linux only (see :func:`available`); elsewhere lanes stay threads.
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worker.engine.errors import DivergedError, Stopped
from worker.engine.hooks import StopFn
from worker.engine.lanes import POLL_S, Work, raise_first
from worker.engine.train import ReportFn

_PR_SET_PDEATHSIG = 1
#: How long stopped children get to save their checkpoints before they are killed.
STOP_GRACE_S = 60.0


def available() -> bool:
    """Whether lanes can be forked here: on Linux, unless this process's autograd engine has
    started threads of its own (then a forked child cannot run a backward pass: torch refuses
    it). That is asked of a forked child, a few milliseconds."""
    if not _can_fork():
        return False
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            x = torch.ones(1, requires_grad=True)
            (x * 2).sum().backward()  # type: ignore[no-untyped-call]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


class LaneError(RuntimeError):
    """A lane failed with an error that is not the engine's own (its traceback attached)."""


class ForkedLanes:
    """Lanes as forked children, each started when the caller has work for it (see
    :class:`worker.engine.lanes.LanePool`). Use as a context manager: leaving it on an error
    (a time limit in this thread, say) stops the children, each at its next poll."""

    def __init__(self, should_stop: StopFn | None) -> None:
        self._should_stop = should_stop
        self._flag = mmap.mmap(-1, 1)  # shared with the children: nonzero asks them to stop
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, _Child] = {}  # by pipe fd, until reaped
        self._errors: list[BaseException] = []
        self._handles = 0

    def __enter__(self) -> ForkedLanes:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self.running:  # left early: stop the children and wait for their checkpoints
            self._flag[0] = 1
        for child in self._children.values():  # those done exit at once
            child.stop_and_reap()
        self._children.clear()
        self._selector.close()

    @property
    def running(self) -> int:
        """Lanes still training (a child that sent its result is on its way out)."""
        return sum(not child.done for child in self._children.values())

    @property
    def stopping(self) -> bool:
        return bool(self._flag[0])

    def start(self, work: Work, report: ReportFn) -> int:
        handle, self._handles = self._handles, self._handles + 1
        child = _start(handle, work, report, self._flag)
        self._children[child.fd] = child
        self._selector.register(child.fd, selectors.EVENT_READ, child)
        return handle

    def wait(self) -> list[tuple[int, Any]]:
        """Relay the children's reports until at least one lane ended (or none runs); returns
        the results of those that finished."""
        finished: list[tuple[int, Any]] = []
        while self.running and not finished:
            for key, _ in self._selector.select(timeout=POLL_S):
                child: _Child = key.data
                for message in child.read():
                    self._handle(message, child, finished)
                if child.closed:
                    self._selector.unregister(child.fd)
                    del self._children[child.fd]
                    child.reap()
                    if not child.done:
                        child.done = True
                        self._fail(LaneError(f"lane {child.index} ended without a result"))
            if self._should_stop is not None and self._should_stop():
                self._flag[0] = 1
        return finished

    def raise_errors(self) -> None:
        """The first real error of a lane, or ``Stopped`` when every failure was a stop."""
        raise_first(self._errors)

    def _fail(self, error: BaseException) -> None:
        self._errors.append(error)
        self._flag[0] = 1

    def _handle(
        self, message: dict[str, Any], child: _Child, finished: list[tuple[int, Any]]
    ) -> None:
        if "report" in message:
            step, metrics = message["report"]
            child.report(step, metrics)
        elif "result" in message:
            finished.append((child.index, message["result"]))
            child.done = True
        elif "error" in message:
            child.done = True
            self._fail(_error(message["error"]))


def call_in_child(function: Callable[[], Any]) -> Any:
    """``function()`` in a forked child, its JSON result returned (its error raised): for work
    that leaves lasting state in the process, such as the ONNX exporter, after which the next
    backward pass starts autograd threads and lanes could no longer be forked. In-process
    where the platform cannot fork."""
    if not _can_fork():
        return function()
    finished: list[tuple[int, Any]] = []
    with ForkedLanes(None) as lanes:
        lanes.start(lambda _report, _stop: function(), _ignore_report)
        while lanes.running:
            finished += lanes.wait()
        lanes.raise_errors()
    return finished[0][1]


def _can_fork() -> bool:
    return sys.platform == "linux" and hasattr(os, "fork")


def _ignore_report(_step: int, _metrics: list[dict[str, float]] | None) -> None:
    pass


def _error(error: dict[str, Any]) -> BaseException:
    if error["kind"] == "diverged":
        return DivergedError(error["step"], error["sibling"], error["detail"])
    if error["kind"] == "stopped":
        return Stopped(error["message"])
    return LaneError(f"{error['type']}: {error['message']}\n{error['traceback']}")


class _Child:
    def __init__(self, index: int, pid: int, fd: int, report: ReportFn) -> None:
        self.index, self.pid, self.fd, self.report = index, pid, fd, report
        self.closed = self.done = False
        self._buffer = b""

    def read(self) -> list[dict[str, Any]]:
        data = os.read(self.fd, 1 << 16)
        if not data:
            self.closed = True
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def reap(self) -> None:
        os.waitpid(self.pid, 0)
        os.close(self.fd)

    def stop_and_reap(self) -> None:
        """Wait for a child asked to stop; kill it if it takes longer than STOP_GRACE_S."""
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def _start(index: int, work: Work, report: ReportFn, flag: mmap.mmap) -> _Child:
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        os.close(read_end)
        _in_child(work, flag, parent, write_end)
    os.close(write_end)
    return _Child(index, pid, read_end, report)


def _in_child(work: Work, flag: mmap.mmap, parent: int, fd: int) -> None:
    code = 0
    try:
        _die_with(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
        # No collections: a finaliser of the parent's objects (a database connection, say)
        # must not run here, and a lane makes little garbage.
        gc.disable()
        torch.set_num_threads(1)

        def send(message: dict[str, Any]) -> None:
            data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
            while data:
                data = data[os.write(fd, data) :]

        def report(step: int, metrics: list[dict[str, float]] | None) -> None:
            send({"report": [step, metrics]})

        def stop() -> bool:
            _pause_while_stopped(parent)
            return bool(flag[0]) or os.getppid() != parent

        try:
            send({"result": work(report, stop)})
        except DivergedError as exc:
            diverged = {"step": exc.step, "sibling": exc.sibling, "detail": exc.detail}
            send({"error": {"kind": "diverged", **diverged}})
        except Stopped as exc:
            send({"error": {"kind": "stopped", "message": str(exc)}})
        except BaseException as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            send({"error": {"kind": "other", **error, "traceback": traceback.format_exc()}})
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _pause_while_stopped(parent: int) -> None:
    """Wait while the parent is stopped (SIGSTOP, a debugger): a frozen worker's job goes to
    another worker, and its lanes must not go on training and writing files meanwhile."""
    while _state(parent) in ("T", "t"):
        time.sleep(POLL_S)


def _state(pid: int) -> str:
    """A process's state letter from ``/proc`` ('' when unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat.rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _die_with(parent: int) -> None:
    """SIGKILL this child when its parent dies (and now, if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
