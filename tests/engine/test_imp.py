"""The IMP driver on real files: artifacts, rewinding, controls, resumption, stop rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas.spec import JobSpec
from worker.engine.artifacts import load_rounds, load_ticket, verify
from worker.engine.data import DataConfig
from worker.engine.errors import SpecError, Stopped
from worker.engine.hooks import Progress
from worker.engine.imp import IMPRun, run
from worker.engine.paths import RunPaths
from worker.engine.tensorio import load_tensors, read_json

DATA = "synthetic://?classes=4&shape=1,6,6&train=400&test=200&noise=1.5"
CONFIG = DataConfig(roots=(Path("/nonexistent"),))


def make_spec(**overrides: Any) -> JobSpec:
    raw: dict[str, Any] = {
        "model": {"arch": "mlp", "hidden_sizes": [24, 16]},
        "dataset": {"uri": DATA, "validation_size": 80},
        "training": {
            "batch_size": 20,
            "steps": "60it",
            "eval_every": "20it",
            "checkpoint_every": "7it",
            "lr": 0.005,
        },
        "pruning": {"rounds": 2, "rates": {"linear": 0.5}},
        "seed": 3,
    }
    for section, values in overrides.items():
        merge = isinstance(values, dict) and section != "model"
        raw[section] = {**raw[section], **values} if merge else values
    return JobSpec.model_validate(raw)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_times(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = json.dumps(rounds)
    data: list[dict[str, Any]] = json.loads(text)
    for r in data:
        for variant in [r["ticket"], *r["controls"].values()]:
            variant.pop("wall_time_s")
    return data


def test_run_writes_ticket_equal_to_rewind_weights_times_mask(tmp_path: Path) -> None:
    spec = make_spec(pruning={"controls": ["random_reinit", "random_prune"]})
    summary = run(spec, tmp_path, CONFIG)
    paths = RunPaths(tmp_path)

    rounds = load_rounds(tmp_path)
    assert [r.round for r in rounds] == [0, 1, 2]
    # mlp 36-24-16-4: 864 + 384 + 64 weights; fc 50%, output 25% per round.
    assert [r.remaining_weights for r in rounds] == [1312, 432 + 192 + 48, 216 + 96 + 36]
    assert summary.ticket_round in (0, 1, 2)

    ticket = load_tensors(paths.ticket)
    mask = load_tensors(paths.final_mask)
    init = load_tensors(paths.init)
    assert set(mask) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(m.dtype == torch.bool for m in mask.values())
    for key, value in init.items():
        expected = value * mask[key] if key in mask else value
        assert torch.equal(ticket[key], expected), key
    winner = rounds[summary.ticket_round]
    assert sum(int(m.sum()) for m in mask.values()) == winner.remaining_weights

    trained = load_tensors(paths.trained(2))
    for key, m in load_tensors(paths.mask(2)).items():
        assert bool((trained[key][~m] == 0).all())

    assert verify(tmp_path) == []
    loaded = load_ticket(tmp_path)
    assert loaded.model(torch.zeros(3, 1, 6, 6)).shape == (3, 4)
    manifest = read_json(paths.manifest)
    assert manifest["spec_hash"] == spec.spec_hash()
    names = {a["name"] for a in manifest["artifacts"]}
    assert {"ticket.safetensors", "mask.safetensors", "rounds/2/mask.safetensors"} <= names


def test_controls_differ_from_the_ticket_only_as_specified(tmp_path: Path) -> None:
    spec = make_spec(pruning={"controls": ["random_reinit", "random_prune"], "rounds": 1})
    run(spec, tmp_path, CONFIG)
    paths = RunPaths(tmp_path)
    mask = load_tensors(paths.mask(1))
    ticket = load_tensors(paths.trained(1))
    reinit = load_tensors(paths.trained(1, "random_reinit"))
    random_mask = load_tensors(paths.mask(1, "random_prune"))
    pruned_random = load_tensors(paths.trained(1, "random_prune"))
    for key, m in mask.items():
        # random_reinit: the very same mask...
        assert bool((reinit[key][~m] == 0).all()) and bool((reinit[key][m] != 0).all())
        # random_prune: the same count per layer, elsewhere.
        assert int(random_mask[key].sum()) == int(m.sum())
        assert not torch.equal(random_mask[key], m)
        assert bool((pruned_random[key][~random_mask[key]] == 0).all())
    assert not torch.equal(ticket["fc1.weight"], reinit["fc1.weight"])
    result = load_rounds(tmp_path)[1]
    for control in ("random_reinit", "random_prune"):
        same_schedule = [p.step for p in result.controls[control].curve]
        assert same_schedule == [p.step for p in result.ticket.curve]
        assert result.controls[control].train_steps == result.ticket.train_steps


def test_late_rewinding_restarts_from_the_saved_step(tmp_path: Path) -> None:
    spec = make_spec(pruning={"rewind_to": "10it", "rounds": 1})
    run(spec, tmp_path, CONFIG)
    paths = RunPaths(tmp_path)
    init, rewind = load_tensors(paths.init), load_tensors(paths.rewind)
    assert not torch.equal(init["fc1.weight"], rewind["fc1.weight"])
    ticket, mask = load_tensors(paths.ticket), load_tensors(paths.final_mask)
    for key, value in rewind.items():  # whichever round won, dense round 0 included
        assert torch.equal(ticket[key], value * mask[key] if key in mask else value)
    rounds = load_rounds(tmp_path)
    assert rounds[0].ticket.train_steps == 60
    assert rounds[1].ticket.train_steps == 50  # from step 10 to 60
    assert rounds[1].ticket.curve[0].step == 10


def test_late_rewinding_matches_a_dense_run_at_that_step(tmp_path: Path) -> None:
    """The rewind snapshot is the dense run's weights after exactly k steps."""
    spec = make_spec(pruning={"rewind_to": "10it", "rounds": 1})
    run(spec, tmp_path / "late", CONFIG)
    short = make_spec(training={"steps": "10it", "eval_every": "10it"}, pruning={"rounds": 0})
    run(short, tmp_path / "short", CONFIG)
    assert_same_tensors(
        load_tensors(RunPaths(tmp_path / "late").rewind),
        load_tensors(RunPaths(tmp_path / "short").trained(0)),
    )


def stop_after(calls: int) -> Callable[[], bool]:
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] > calls

    return should_stop


@pytest.mark.parametrize("retrain", ["weight_rewind", "lr_rewind"])
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    tmp_path: Path, retrain: str
) -> None:
    spec = make_spec(
        training={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        dataset={"augment": False},
        pruning={"retrain": retrain, "rewind_to": "5it", "controls": ["random_reinit"]},
    )
    run(spec, tmp_path / "straight", CONFIG)

    stops = 0
    while True:
        try:
            run(
                spec,
                tmp_path / "interrupted",
                CONFIG,
                should_stop=stop_after(12),
                poll_seconds=0.0,
            )
            break
        except Stopped:
            stops += 1
    assert stops >= 5  # interrupted inside several trainings, mid-round each time

    a, b = RunPaths(tmp_path / "straight"), RunPaths(tmp_path / "interrupted")
    assert without_times(read_json(a.rounds)) == without_times(read_json(b.rounds))
    for name in ["ticket", "final_mask", "final_trained", "dense", "rewind"]:
        assert_same_tensors(load_tensors(getattr(a, name)), load_tensors(getattr(b, name)))
    for k in (1, 2):
        assert_same_tensors(
            load_tensors(a.trained(k, "random_reinit")), load_tensors(b.trained(k, "random_reinit"))
        )
    assert not list((tmp_path / "interrupted").rglob("checkpoint.safetensors"))


def test_resume_with_augmentation_is_exact(tmp_path: Path) -> None:
    spec = make_spec(
        model={"arch": "conv2"},
        dataset={"uri": "synthetic://?classes=3&shape=3,8,8&train=120&test=60", "augment": True},
        training={"steps": "12it", "eval_every": "6it", "checkpoint_every": "4it"},
        pruning={"rounds": 1, "rates": {"conv": 0.1}},
    )
    run(spec, tmp_path / "straight", CONFIG)
    while True:
        try:
            run(spec, tmp_path / "resumed", CONFIG, should_stop=stop_after(5), poll_seconds=0.0)
            break
        except Stopped:
            continue
    a, b = RunPaths(tmp_path / "straight"), RunPaths(tmp_path / "resumed")
    assert_same_tensors(load_tensors(a.trained(1)), load_tensors(b.trained(1)))


def test_finished_rounds_are_skipped(tmp_path: Path) -> None:
    spec = make_spec()
    run(spec, tmp_path, CONFIG)
    paths = RunPaths(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("rounds/*/trained.safetensors")}
    events: list[Progress] = []
    run(spec, tmp_path, CONFIG, on_progress=events.append)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("rounds/*/trained.safetensors")}
    assert before == after
    assert not [e for e in events if e.event in ("step", "eval")]  # nothing was retrained
    assert paths.ticket.exists()


def test_progress_reports_rounds_steps_and_metrics(tmp_path: Path) -> None:
    events: list[Progress] = []
    run(make_spec(pruning={"rounds": 1}), tmp_path, CONFIG, on_progress=events.append)
    evals = [e for e in events if e.event == "eval"]
    assert {e.round for e in evals} == {0, 1}
    assert all("test_accuracy" in e.metrics and "val_loss" in e.metrics for e in evals)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_target_density_stops_early(tmp_path: Path) -> None:
    summary = run(make_spec(pruning={"rounds": 10, "target_density": 0.3}), tmp_path, CONFIG)
    rounds = load_rounds(tmp_path)
    assert rounds[-1].density <= 0.3 < rounds[-2].density
    assert "target density" in summary.stop_reason


def test_one_shot_prunes_to_the_target_in_one_round(tmp_path: Path) -> None:
    spec = make_spec(pruning={"one_shot": True, "target_density": 0.2, "strategy": "global"})
    run(spec, tmp_path, CONFIG)
    rounds = load_rounds(tmp_path)
    assert len(rounds) == 2
    assert rounds[1].density == pytest.approx(0.2, abs=1e-3)


def test_accuracy_drop_stops_the_run(tmp_path: Path) -> None:
    spec = make_spec(pruning={"rounds": 6, "rates": {"linear": 0.9}, "max_accuracy_drop": 0.0})
    summary = run(spec, tmp_path, CONFIG)
    assert "accuracy fell" in summary.stop_reason
    assert summary.rounds_completed < 6


def test_finetune_trains_from_the_previous_weights_at_a_constant_rate(tmp_path: Path) -> None:
    spec = make_spec(pruning={"retrain": "finetune", "rounds": 1, "finetune_lr": 1e-4})
    run(spec, tmp_path, CONFIG)
    rounds = load_rounds(tmp_path)
    assert rounds[1].ticket.train_steps == 60


def test_a_directory_of_another_job_is_refused(tmp_path: Path) -> None:
    run(make_spec(pruning={"rounds": 0}), tmp_path, CONFIG)
    with pytest.raises(SpecError, match="another spec"):
        IMPRun(make_spec(seed=4, pruning={"rounds": 0}), tmp_path, CONFIG)


def test_rewind_past_the_end_in_other_units_is_caught_once_data_is_known(tmp_path: Path) -> None:
    # 320 training examples / batch 20 = 16 iterations per epoch; 4 epochs = 64 > 60 iterations.
    with pytest.raises(SpecError, match="rewind_to"):
        IMPRun(make_spec(pruning={"rewind_to": "4ep"}), tmp_path, CONFIG)


def test_unknown_exclusions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="fc9"):
        IMPRun(make_spec(pruning={"exclude": ["fc9"]}), tmp_path, CONFIG)


def test_same_spec_and_seed_give_identical_results(tmp_path: Path) -> None:
    spec = make_spec(pruning={"rounds": 1})
    run(spec, tmp_path / "a", CONFIG)
    run(spec, tmp_path / "b", CONFIG)
    assert without_times(read_json(RunPaths(tmp_path / "a").rounds)) == without_times(
        read_json(RunPaths(tmp_path / "b").rounds)
    )


def test_starting_weights_are_the_users(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from worker.engine.models import build_model

    torch.manual_seed(123)
    spec = make_spec(pruning={"rounds": 1})
    theirs = build_model(spec.model, (1, 6, 6), 4).state_dict()
    weights = tmp_path / "data" / "mine.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(weights))
    spec = make_spec(model={"arch": "mlp", "hidden_sizes": [24, 16], "weights": str(weights)})
    run(spec, tmp_path / "out", DataConfig(roots=(weights.parent,)))
    assert_same_tensors(load_tensors(RunPaths(tmp_path / "out").init), theirs)

    from worker.engine.errors import DataError

    with pytest.raises(DataError, match=r"mine\.safetensors"):
        IMPRun(spec, tmp_path / "elsewhere", DataConfig(roots=(tmp_path / "nowhere",)))


def test_a_dense_winner_under_late_rewinding_is_the_rewind_point(tmp_path: Path) -> None:
    """With no pruning round, the 'ticket' is the dense net at the rewind step, not its init."""
    run(make_spec(pruning={"rewind_to": "10it", "rounds": 0}), tmp_path, CONFIG)
    paths = RunPaths(tmp_path)
    assert read_json(paths.manifest)["summary"]["ticket_round"] == 0
    assert_same_tensors(load_tensors(paths.ticket), load_tensors(paths.rewind))
