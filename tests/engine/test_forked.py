"""Forked lanes: results in order, progress relayed, failures and stops as thread lanes give."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from worker.engine import forked
from worker.engine.errors import DivergedError, Stopped
from worker.engine.forked import Lane, LaneError, run_forked
from worker.engine.hooks import StopFn
from worker.engine.train import ReportFn

pytestmark = pytest.mark.skipif(not forked.available(), reason="lanes fork on Linux only")


def _noop(_step: int, _metrics: list[dict[str, float]] | None) -> None:
    pass


def test_each_lane_runs_in_a_child_and_its_reports_reach_the_parent() -> None:
    seen: list[tuple[int, int]] = []

    def lane(index: int) -> Lane:
        def work(report: ReportFn, _stop: StopFn) -> dict[str, int]:
            report(index, [{"loss": 0.5}])
            return {"index": index, "pid": os.getpid()}

        return Lane(work, lambda step, metrics: seen.append((step, len(metrics or []))))

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
        run_forked([Lane(patient, _noop), Lane(failing, _noop)], at_once=2, should_stop=None)
    assert "Traceback" in str(raised.value)
    assert (tmp_path / "stopped").read_text() == "yes"


def test_divergence_keeps_its_step_sibling_and_detail() -> None:
    def diverging(_report: ReportFn, _stop: StopFn) -> None:
        raise DivergedError(17, 1, " in round 2, random_reinit")

    with pytest.raises(DivergedError) as raised:
        run_forked([Lane(diverging, _noop)], at_once=1, should_stop=None)
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
            [Lane(endless, _noop) for _ in range(2)],
            at_once=2,
            should_stop=lambda: time.monotonic() - started > 0.3,
        )
    assert time.monotonic() - started < 10
