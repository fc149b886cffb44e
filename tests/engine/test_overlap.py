"""Rounds that overlap on lanes: round k+1's trainings start once round k's tickets are trained,
while round k's controls may still train. Same numbers as round by round on one core, exact
resume, the same stop rules, and rounds recorded in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engine.test_batched import without_times
from tests.engine.test_imp import CONFIG, assert_same_tensors, make_spec, stop_after
from worker.engine import forked
from worker.engine.errors import Stopped
from worker.engine.hooks import Progress
from worker.engine.imp import run
from worker.engine.paths import RunPaths
from worker.engine.tensorio import load_tensors, read_json

CONTROLS = {"controls": ["random_reinit", "random_prune"]}
VARIANTS = ("ticket", "random_reinit", "random_prune")


@pytest.fixture(params=["processes", "threads"])
def lanes_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Lanes as forked processes (where the platform allows) or as threads."""
    kind: str = request.param
    if kind == "processes" and not forked.available():
        pytest.skip("lanes fork on Linux only")
    if kind == "threads":
        monkeypatch.setattr(forked, "available", lambda: False)
    return kind


def _order(events: list[Progress]) -> list[tuple[str, int]]:
    return [(p.event, p.round) for p in events if p.event in ("execution", "round_done")]


def _assert_same_runs(a: RunPaths, b: RunPaths, rounds: int) -> None:
    assert without_times(read_json(a.rounds)) == without_times(read_json(b.rounds))
    for k in range(1, rounds + 1):
        assert_same_tensors(load_tensors(a.mask(k)), load_tensors(b.mask(k)))
        for variant in VARIANTS:
            assert_same_tensors(
                load_tensors(a.trained(k, variant)), load_tensors(b.trained(k, variant))
            )
    for name in ["ticket", "final_mask", "final_trained"]:
        assert_same_tensors(load_tensors(getattr(a, name)), load_tensors(getattr(b, name)))


def test_the_next_round_starts_before_this_rounds_controls_are_done(
    tmp_path: Path, lanes_as: str
) -> None:
    spec = make_spec(pruning={**CONTROLS, "rounds": 3})
    events: list[Progress] = []
    run(spec, tmp_path / "two", CONFIG, on_progress=events.append, threads=lambda: 2)
    order = _order(events)
    for k in (1, 2):  # round k+1 is planned as soon as round k's ticket is trained
        assert order.index(("execution", k + 1)) < order.index(("round_done", k))
    done = [k for event, k in order if event == "round_done"]
    assert done == [0, 1, 2, 3]  # yet recorded in order
    execution = [p.info for p in events if p.event == "execution"]
    assert {info.get("lanes_as") for info in execution[1:]} == {lanes_as}
    fractions = [p.fraction for p in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    run(spec, tmp_path / "one", CONFIG, threads=lambda: 1)  # round by round, one stack each
    _assert_same_runs(RunPaths(tmp_path / "one"), RunPaths(tmp_path / "two"), rounds=3)


def test_overlapping_rounds_resumed_again_and_again_end_as_round_by_round(
    tmp_path: Path,
) -> None:
    spec = make_spec(training={"optimizer": "adam", "lr": 0.01, "steps": "120it"}, pruning=CONTROLS)
    run(spec, tmp_path / "one", CONFIG, threads=lambda: 1)
    stops = 0
    while True:
        try:
            run(
                spec,
                tmp_path / "two",
                CONFIG,
                threads=lambda: 2,
                should_stop=stop_after(6),
                poll_seconds=0,
            )
            break
        except Stopped:
            stops += 1
    assert stops >= 3
    b = RunPaths(tmp_path / "two")
    assert all(read_json(b.round_plan(k))["lanes"] == 2 for k in (1, 2))
    _assert_same_runs(RunPaths(tmp_path / "one"), b, rounds=2)
    assert not list((tmp_path / "two").rglob("*checkpoint*.safetensors"))


@pytest.mark.parametrize(
    "pruning",
    [
        {"rounds": 10, "target_density": 0.3},
        {"rounds": 6, "rates": {"linear": 0.9}, "max_accuracy_drop": 0.0},
    ],
    ids=["target_density", "max_accuracy_drop"],
)
def test_the_stop_rules_end_overlapping_rounds_where_round_by_round_ends(
    tmp_path: Path, pruning: dict[str, Any]
) -> None:
    spec = make_spec(pruning={**CONTROLS, **pruning})
    one = run(spec, tmp_path / "one", CONFIG, threads=lambda: 1)
    two = run(spec, tmp_path / "two", CONFIG, threads=lambda: 2)
    assert one.stop_reason == two.stop_reason != "completed all rounds"
    assert one.rounds_completed == two.rounds_completed
    after = RunPaths(tmp_path / "two").round_plan(two.rounds_completed + 1)
    assert not after.exists()  # the round after the stop was never started
    _assert_same_runs(RunPaths(tmp_path / "one"), RunPaths(tmp_path / "two"), one.rounds_completed)
