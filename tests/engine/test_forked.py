"""Lane pools: forked children (and threads, where they must behave alike): results, progress
relayed, failures and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from worker.engine import forked
from worker.engine.errors import DivergedError, Stopped
from worker.engine.forked import ForkedLanes, LaneError
from worker.engine.hooks import StopFn
from worker.engine.lanes import ThreadLanes, Work
from worker.engine.train import ReportFn

pytestmark = pytest.mark.skipif(not forked.available(), reason="lanes fork on Linux only")
Lane = tuple[Work, ReportFn]


def run_forked(lanes: list[Lane], at_once: int, should_stop: StopFn | None) -> list[Any]:
    """Every lane on ``ForkedLanes``, ``at_once`` at a time; their results in order."""
    return _run(ForkedLanes(should_stop), lanes, at_once)


def _run(pool: ForkedLanes | ThreadLanes, lanes: list[Lane], at_once: int) -> list[Any]:
    results: dict[int, Any] = {}
    waiting = list(lanes)
    with pool:
        while True:
            while waiting and not pool.stopping and pool.running < at_once:
                pool.start(*waiting.pop(0))
            if not pool.running:
                break
            results.update(pool.wait())
        pool.raise_errors()
    assert not waiting
    return [results[i] for i in sorted(results)]


def _noop(_step: int, _metrics: list[dict[str, float]] | None) -> None:
    pass


def test_each_lane_runs_in_a_child_and_its_reports_reach_the_parent() -> None:
    seen: list[tuple[int, int]] = []

    def lane(index: int) -> Lane:
        def work(report: ReportFn, _stop: StopFn) -> dict[str, int]:
            report(index, [{"loss": 0.5}])
            return {"index": index, "pid": os.getpid()}

        return work, lambda step, metrics: seen.append((step, len(metrics or [])))

    results = run_forked([lane(i) for i in range(3)], at_once=2, should_stop=None)
    assert [r["index"] for r in results] == [0, 1, 2]
    assert os.getpid() not in {r["pid"] for r in results}
    assert len({r["pid"] for r in results}) == 3
    assert sorted(seen) == [(0, 1), (1, 1), (2, 1)]


def test_a_failing_lane_stops_the_others_and_its_error_is_raised(tmp_path: Path) -> None:
    def failing(_report: ReportFn, _stop: StopFn) -> None:
        raise ValueError("bad input in lane")

    def patient(_report: ReportFn, stop: StopFn) -> None:
        deadline = time.monotonic() + 60
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "stopped").write_text("yes")  # what a lane's checkpoint would be
        raise Stopped("asked to stop")

    with pytest.raises(LaneError, match="ValueError: bad input in lane") as raised:
        run_forked([(patient, _noop), (failing, _noop)], at_once=2, should_stop=None)
    assert "Traceback" in str(raised.value)
    assert (tmp_path / "stopped").read_text() == "yes"


def test_divergence_keeps_its_step_sibling_and_detail() -> None:
    def diverging(_report: ReportFn, _stop: StopFn) -> None:
        raise DivergedError(17, 1, " in round 2, random_reinit")

    with pytest.raises(DivergedError) as raised:
        run_forked([(diverging, _noop)], at_once=1, should_stop=None)
    assert (raised.value.step, raised.value.sibling) == (17, 1)
    assert "at step 17 in round 2, random_reinit" in str(raised.value)


def test_the_parents_stop_check_stops_every_child() -> None:
    started = time.monotonic()

    def endless(_report: ReportFn, stop: StopFn) -> None:
        while not stop():
            time.sleep(0.01)
        raise Stopped("stopped at a checkpoint")

    with pytest.raises(Stopped):
        run_forked(
            [(endless, _noop) for _ in range(2)],
            at_once=2,
            should_stop=lambda: time.monotonic() - started > 0.3,
        )
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_a_lane_that_sent_its_result_frees_its_place_at_once(kind: str) -> None:
    """The next stack starts when a lane's result arrives, not when another lane ends."""

    def quick(_report: ReportFn, _stop: StopFn) -> float:
        return time.time()

    def slow(_report: ReportFn, _stop: StopFn) -> float:
        time.sleep(1.5)
        return time.time()

    def late(_report: ReportFn, _stop: StopFn) -> float:
        return time.time()

    pool = ForkedLanes(None) if kind == "processes" else ThreadLanes(None)
    with pool:
        pool.start(slow, _noop)
        pool.start(quick, _noop)
        while not (done := pool.wait()):
            pass
        assert pool.running == 1
        pool.start(late, _noop)
        results = dict(done)
        while pool.running:
            results.update(pool.wait())
        pool.raise_errors()
    assert results[2] < results[0]  # the third lane finished while the slow one still ran


def test_a_stopped_parent_pauses_its_lanes(tmp_path: Path) -> None:
    """A frozen worker's lanes must not train on while another worker takes its job over."""
    ticks = tmp_path / "ticks"

    def ticking(_report: ReportFn, stop: StopFn) -> None:
        while not stop():
            with ticks.open("a") as out:
                out.write(".")
            time.sleep(0.02)
        raise Stopped("stopped")

    child = os.fork()
    if child == 0:  # a parent of lanes to freeze
        try:
            run_forked([(ticking, _noop)], at_once=1, should_stop=None)
        finally:
            os._exit(0)
    try:
        while not ticks.exists():
            time.sleep(0.05)
        os.kill(child, signal.SIGSTOP)
        time.sleep(0.5)  # the lane sees it at its next poll
        frozen = ticks.stat().st_size
        time.sleep(1.0)
        assert ticks.stat().st_size == frozen
        os.kill(child, signal.SIGCONT)
        time.sleep(0.5)
        assert ticks.stat().st_size > frozen
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_run_leaves_its_process_able_to_fork_lanes(tmp_path: Path) -> None:
    """The run's ONNX export happens in a child. In-process, a process whose first backward
    pass came after an export (every training of the run on lanes) would start autograd
    threads then, after which no lane could be forked. A fresh process, as that needs."""
    script = f"""
import torch
from pathlib import Path
from tests.engine.test_imp import CONFIG, make_spec
from worker.engine import forked
from worker.engine.imp import run

spec = make_spec(pruning={{"rounds": 1, "controls": ["random_reinit"]}}, replicates=2)
run(spec, Path({str(tmp_path)!r}), CONFIG, threads=lambda: 2)
assert (Path({str(tmp_path)!r}) / "model.onnx").exists()
x = torch.ones(3, requires_grad=True)
(x * 2).sum().backward()
print("forks" if forked.available() else "cannot fork")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "forks", done.stderr[-2000:]
