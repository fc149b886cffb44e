"""Lanes as forked processes: each stack of a round trains in a child of this process.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.engine.errors import DivergedError, Stopped
from worker.engine.hooks import StopFn
from worker.engine.train import ReportFn

#: A lane's work, run in the child: given its report and stop functions, returns JSON data.
Work = Callable[[ReportFn, StopFn], Any]
_PR_SET_PDEATHSIG = 1
#: How often the parent looks at its stop check between the children's messages.
POLL_S = 0.05
#: How long stopped children get to save their checkpoints before they are killed.
STOP_GRACE_S = 60.0


def available() -> bool:
    """Whether lanes can be forked here: on Linux, unless this process's autograd engine has
    started threads of its own (then a forked child cannot run a backward pass: torch refuses
    it). That is asked of a forked child, a few milliseconds."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
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


@dataclass
class Lane:
    """One stack to train in a child: its work, and where the parent relays its reports."""

    work: Work
    report: ReportFn


class LaneError(RuntimeError):
    """A lane failed with an error that is not the engine's own (its traceback attached)."""


def run_forked(lanes: Sequence[Lane], at_once: int, should_stop: StopFn | None) -> list[Any]:
    """Run every lane's work in a forked child, ``at_once`` at a time, in order; returns their
    results. As :func:`worker.engine.lanes.run_lanes`: when one fails the others stop at their
    next poll (keeping their checkpoints), the first real error is raised, ``Stopped`` only
    when every failure was a stop."""
    flag = mmap.mmap(-1, 1)  # shared with the children: nonzero asks them to stop
    results: list[Any] = [None] * len(lanes)
    errors: list[BaseException] = []
    running: dict[int, _Child] = {}
    waiting = list(range(len(lanes)))
    selector = selectors.DefaultSelector()
    try:
        while waiting or running:
            while waiting and len(running) < max(at_once, 1) and not flag[0]:
                index = waiting.pop(0)
                child = _start(index, lanes[index].work, flag)
                running[child.fd] = child
                selector.register(child.fd, selectors.EVENT_READ, child)
            if not running:
                break  # stopped before the rest could start
            for key, _ in selector.select(timeout=POLL_S):
                child = key.data
                for message in child.read():
                    _handle(message, child, lanes, results, errors, flag)
                if child.closed:
                    selector.unregister(child.fd)
                    del running[child.fd]
                    child.reap()
                    if not child.done:
                        errors.append(LaneError(f"lane {child.index} ended without a result"))
                        flag[0] = 1
            if should_stop is not None and should_stop():
                flag[0] = 1
    except BaseException:  # a time limit in this thread, say: stop the children too
        flag[0] = 1
        for child in running.values():
            child.stop_and_reap()
        raise
    finally:
        selector.close()
    if errors:
        real = [e for e in errors if not isinstance(e, Stopped)]
        raise (real or errors)[0]
    if waiting:
        raise Stopped("stopped before every lane could start")
    return results


def _handle(
    message: dict[str, Any],
    child: _Child,
    lanes: Sequence[Lane],
    results: list[Any],
    errors: list[BaseException],
    flag: mmap.mmap,
) -> None:
    if "report" in message:
        step, metrics = message["report"]
        lanes[child.index].report(step, metrics)
    elif "result" in message:
        results[child.index] = message["result"]
        child.done = True
    elif "error" in message:
        errors.append(_error(message["error"]))
        child.done = True
        flag[0] = 1


def _error(error: dict[str, Any]) -> BaseException:
    if error["kind"] == "diverged":
        return DivergedError(error["step"], error["sibling"], error["detail"])
    if error["kind"] == "stopped":
        return Stopped(error["message"])
    return LaneError(f"{error['type']}: {error['message']}\n{error['traceback']}")


class _Child:
    def __init__(self, index: int, pid: int, fd: int) -> None:
        self.index, self.pid, self.fd = index, pid, fd
        self.closed = self.done = False
        self._buffer = b""

    def read(self) -> list[dict[str, Any]]:
        data = os.read(self.fd, 1 << 16)
        if not data:
            self.closed = True
            os.close(self.fd)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def reap(self) -> None:
        os.waitpid(self.pid, 0)

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
        if not self.closed:
            os.close(self.fd)


def _start(index: int, work: Work, flag: mmap.mmap) -> _Child:
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        os.close(read_end)
        _in_child(work, flag, parent, write_end)
    os.close(write_end)
    return _Child(index, pid, read_end)


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


def _die_with(parent: int) -> None:
    """SIGKILL this child when its parent dies (and now, if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
