"""Stacked ("batched") training against one network at a time: same numbers, exact resume,
replicates, and the fallback for models that cannot be stacked."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas.spec import DatasetSpec, JobSpec, ModelSpec, TrainingSpec
from tests.engine.test_imp import CONFIG, assert_same_tensors, make_spec, stop_after
from worker.engine import forked
from worker.engine.data import DataConfig, load_dataset
from worker.engine.errors import DivergedError, Stopped
from worker.engine.hooks import Progress
from worker.engine.imp import IMPRun, run
from worker.engine.masks import MaskEnforcer, dense_mask, prunable_layers
from worker.engine.models import build_model
from worker.engine.optim import build_optimizer
from worker.engine.paths import RunPaths
from worker.engine.pruning import prune_layerwise
from worker.engine.stack import StackedModel, stack_reason
from worker.engine.tensorio import load_tensors, read_json
from worker.engine.train import Trainee, train_step

ARCHS: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
    ("lenet_300_100", (1, 28, 28), {}),
    ("mlp", (40,), {"hidden_sizes": [32, 16]}),
    ("conv2", (3, 16, 16), {}),
    ("conv4", (3, 16, 16), {}),
    ("conv6", (3, 16, 16), {}),
    ("vgg11", (3, 32, 32), {}),
    ("resnet20", (3, 16, 16), {"width": 4}),
]


def _models(arch: str, shape: tuple[int, ...], options: dict[str, Any], n: int) -> list[Any]:
    torch.manual_seed(0)
    return [build_model(ModelSpec(arch=arch, **options), shape, 10) for _ in range(n)]


@pytest.mark.parametrize(("arch", "shape", "options"), ARCHS, ids=[a[0] for a in ARCHS])
def test_every_built_in_architecture_stacks_and_steps_like_its_networks_alone(
    arch: str, shape: tuple[int, ...], options: dict[str, Any]
) -> None:
    """Matmul-only nets are bit-identical in float32. Grouped convolutions sum in another
    order, and batch norm over 8 examples amplifies that rounding chaotically (by how much
    depends on the CPU's kernels), so conv nets are compared in float64, where only a wrong
    stacking could make them differ."""
    exact = arch in ("lenet_300_100", "mlp")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if exact else torch.float64)
    try:
        _steps_like_alone(arch, shape, options, exact)
    finally:
        torch.set_default_dtype(previous)


def _steps_like_alone(
    arch: str, shape: tuple[int, ...], options: dict[str, Any], exact: bool
) -> None:
    torch.set_num_threads(1)
    singles = _models(arch, shape, options, 3)
    assert stack_reason(arch, singles[0]) is None
    stacked = StackedModel.from_models(copy.deepcopy(singles))
    masks = [
        prune_layerwise(m.state_dict(), dense_mask(m), prunable_layers(m), _rates())
        for m in singles
    ]
    training = TrainingSpec(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-3)
    stack = Trainee(stacked)
    stack_opt = build_optimizer(stack.optimizer_parameters(), training)
    stack_mask = MaskEnforcer(stack.net, stacked.stacked_masks(masks))
    alone = [Trainee(m) for m in singles]
    alone_opt = [build_optimizer(t.optimizer_parameters(), training) for t in alone]
    alone_mask = [MaskEnforcer(m, mask) for m, mask in zip(singles, masks, strict=True)]
    stack_mask()
    for enforce in alone_mask:
        enforce()
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(3, 8, *shape, generator=generator)
        y = torch.randint(0, 10, (3, 8), generator=generator)
        losses = train_step(stack, stack_opt, stack_mask, x, y, per_sibling=True)
        for i, trainee in enumerate(alone):
            loss = train_step(
                trainee, alone_opt[i], alone_mask[i], x[i : i + 1], y[i], per_sibling=True
            )
            # Losses are taken in float32, and the stack averages per-example losses itself:
            # equal up to that rounding.
            assert losses[i].item() == pytest.approx(loss.item(), rel=1e-6)
    for i, model in enumerate(singles):
        state = stacked.sibling_state(i)
        for key, value in model.state_dict().items():
            if exact:
                assert torch.equal(state[key], value), key
            else:
                torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-8)
        for key, mask in masks[i].items():
            assert not state[key][~mask].any(), f"pruned weights of {key} moved"


def _rates() -> Any:
    from api_schemas.spec import LayerRates

    return LayerRates(linear=0.5, conv=0.3)


def test_a_torchvision_model_trains_one_by_one_and_the_events_say_why(tmp_path: Path) -> None:
    model = build_model(ModelSpec(arch="torchvision:squeezenet1_1"), (3, 32, 32), 10)
    reason = stack_reason("torchvision:squeezenet1_1", model)
    assert reason is not None and "one by one" in reason
    spec = make_spec(
        model={"arch": "torchvision:squeezenet1_1"},
        dataset={
            "uri": "synthetic://?classes=3&shape=3,32,32&train=60&test=20",
            "validation_size": 20,
        },
        training={"steps": "2it", "eval_every": "2it", "checkpoint_every": "2it"},
        pruning={"rounds": 1, "controls": ["random_reinit"]},
    )
    events: list[Progress] = []
    run(spec, tmp_path, CONFIG, on_progress=events.append)
    execution = [p.info for p in events if p.event == "execution"]
    assert execution[-1]["path"] == "one_by_one"
    assert "torchvision" in str(execution[-1]["reason"])


@pytest.mark.parametrize(
    ("cores", "replicates", "stacks", "lanes"),
    [(1, 1, [3], 1), (2, 1, [1, 1, 1], 2), (4, 1, [1, 1, 1], 3), (2, 2, [1, 1, 2, 2], 2)],
)
def test_rounds_with_controls_run_stacked_one_stack_per_core_and_say_so(
    tmp_path: Path, cores: int, replicates: int, stacks: list[int], lanes: int
) -> None:
    """On one core a round is one stack. On more, the tickets (which the next round waits for)
    and the controls are split over the lanes apart, a network to a lane while there are
    enough lanes, stacked when there are more networks."""
    spec = make_spec(pruning={"controls": ["random_reinit", "random_prune"]}, replicates=replicates)
    events: list[Progress] = []
    run(spec, tmp_path, CONFIG, on_progress=events.append, threads=lambda: cores)
    execution = {p.info["round"]: p.info for p in events if p.event == "execution"}
    assert execution[0]["networks"] == replicates
    path = "batched" if max(stacks) > 1 else "one_by_one"
    expected: dict[str, object] = {
        "round": 1,
        "path": path,
        "networks": 3 * replicates,
        "stacks": stacks if path == "batched" else [],
        "lanes": lanes,
    }
    if lanes > 1:  # lanes are forked processes where the platform allows
        expected["lanes_as"] = "processes" if forked.available() else "threads"
    assert execution[1] == expected
    assert not list(tmp_path.rglob("stack-*.safetensors"))  # checkpoints go once trained
    fractions = [p.fraction for p in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # lanes add up, never back


def test_stacks_side_by_side_give_the_results_of_one_stack_bit_for_bit(tmp_path: Path) -> None:
    """Lanes change where a network trains, never what it computes (matmul-only nets)."""
    spec = make_spec(pruning={"controls": ["random_reinit", "random_prune"]}, replicates=2)
    run(spec, tmp_path / "one", CONFIG, threads=lambda: 1)
    run(spec, tmp_path / "lanes", CONFIG, threads=lambda: 2)
    a, b = RunPaths(tmp_path / "one"), RunPaths(tmp_path / "lanes")
    assert read_json(b.round_plan(1))["lanes"] == 2
    assert without_times(read_json(a.rounds)) == without_times(read_json(b.rounds))
    for r in (0, 1):
        for variant in ("ticket", "random_reinit", "random_prune"):
            assert_same_tensors(
                load_tensors(a.replicate(r).trained(2, variant)),
                load_tensors(b.replicate(r).trained(2, variant)),
            )


def test_a_diverging_stack_fails_with_the_step_and_stops_its_neighbours(tmp_path: Path) -> None:
    spec = make_spec(
        training={"optimizer": "sgd", "lr": 1e6, "steps": "200it"},
        pruning={"controls": ["random_reinit"]},
    )
    with pytest.raises(DivergedError, match=r"loss became non-finite at step \d+ in round 0"):
        run(spec, tmp_path, CONFIG, threads=lambda: 2, poll_seconds=0)
    paths = RunPaths(tmp_path)
    assert not paths.metrics(0).exists() and not paths.checkpoint(0).exists()


def without_times(value: Any) -> Any:
    """Results with every wall time left out (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k != "wall_time_s"}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def _real_spec(data: Path, **overrides: Any) -> JobSpec:
    raw: dict[str, Any] = {
        "model": {"arch": "lenet_300_100"},
        "dataset": {"uri": f"idx://{data}"},
        "training": {"steps": "400it", "eval_every": "200it"},
        "pruning": {"rounds": 1, "controls": ["random_reinit"]},
        "replicates": 2,
        "reuse": False,
    }
    raw.update(overrides)
    return JobSpec.model_validate(raw)


def test_batched_and_one_by_one_agree_on_real_fashion_mnist(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """Two replicates with a control: the dense round and round 1 are stacked (2 and 4 nets)."""
    torch.set_num_threads(1)
    spec = _real_spec(fashion_mnist_dir)
    config = DataConfig(roots=(fashion_mnist_dir,))
    batched = run(spec, tmp_path / "batched", config, batched=True)
    alone = run(spec, tmp_path / "alone", config, batched=False)
    a, b = RunPaths(tmp_path / "batched"), RunPaths(tmp_path / "alone")
    for r in (0, 1):
        assert_same_tensors(
            load_tensors(a.replicate(r).mask(1)), load_tensors(b.replicate(r).mask(1))
        )
    assert abs(batched.ticket_accuracy - alone.ticket_accuracy) <= 0.003
    rounds_a, rounds_b = read_json(a.rounds), read_json(b.rounds)
    for ra, rb in zip(rounds_a, rounds_b, strict=True):
        for replicate_a, replicate_b in zip(ra["replicates"], rb["replicates"], strict=True):
            for variant in ["ticket", *replicate_a["controls"]]:
                va = (
                    replicate_a["ticket"]
                    if variant == "ticket"
                    else replicate_a["controls"][variant]
                )
                vb = (
                    replicate_b["ticket"]
                    if variant == "ticket"
                    else replicate_b["controls"][variant]
                )
                assert abs(va["accuracy"] - vb["accuracy"]) <= 0.003, variant


def test_the_first_200_steps_lose_the_same_stacked_or_alone(fashion_mnist_dir: Path) -> None:
    torch.set_num_threads(1)
    dataset = load_dataset(
        DatasetSpec(uri=f"idx://{fashion_mnist_dir}"),
        DataConfig(roots=(fashion_mnist_dir,)),
        seed=0,
        device=torch.device("cpu"),
    )
    singles = _models("lenet_300_100", (1, 28, 28), {}, 3)
    stacked = StackedModel.from_models(copy.deepcopy(singles))
    training = TrainingSpec()
    stack = Trainee(stacked)
    stack_opt = build_optimizer(stack.optimizer_parameters(), training)
    stack_mask = MaskEnforcer(stack.net, stacked.stacked_masks([dense_mask(m) for m in singles]))
    alone = [Trainee(m) for m in singles]
    alone_opt = [build_optimizer(m.parameters(), training) for m in singles]
    alone_mask = [MaskEnforcer(m, dense_mask(m)) for m in singles]
    batches = dataset.train_batches(60, 7)
    for step in range(200):
        x, y = batches.batch(step)
        losses = train_step(stack, stack_opt, stack_mask, x, y)
        for i, trainee in enumerate(alone):
            loss = train_step(trainee, alone_opt[i], alone_mask[i], x, y)
            assert losses[i].item() == pytest.approx(loss.item(), abs=1e-6), (step, i)
    for i, model in enumerate(singles):
        assert_same_tensors(stacked.sibling_state(i), model.state_dict())


def test_a_resumed_stacked_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path: Path) -> None:
    spec = make_spec(
        training={"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4},
        pruning={"controls": ["random_reinit", "random_prune"]},
        replicates=2,
    )
    run(spec, tmp_path / "straight", CONFIG)
    stops = 0
    while True:
        try:
            run(spec, tmp_path / "interrupted", CONFIG, should_stop=stop_after(17), poll_seconds=0)
            break
        except Stopped:
            stops += 1
    assert stops >= 5
    a, b = RunPaths(tmp_path / "straight"), RunPaths(tmp_path / "interrupted")
    assert without_times(read_json(a.rounds)) == without_times(read_json(b.rounds))
    for r in (0, 1):
        for k in (0, 1, 2):
            assert_same_tensors(
                load_tensors(a.replicate(r).trained(k)), load_tensors(b.replicate(r).trained(k))
            )
        assert_same_tensors(
            load_tensors(a.replicate(r).trained(2, "random_prune")),
            load_tensors(b.replicate(r).trained(2, "random_prune")),
        )
    assert not list((tmp_path / "interrupted").rglob("*checkpoint*.safetensors"))
    assert not list((tmp_path / "interrupted").rglob("stack-*.safetensors"))


def test_replicates_are_independent_chains_with_mean_and_std(tmp_path: Path) -> None:
    spec = make_spec(pruning={"controls": ["random_reinit"]}, replicates=3)
    summary = run(spec, tmp_path, CONFIG)
    paths = RunPaths(tmp_path)
    rounds = read_json(paths.rounds)
    assert summary.replicates == 3
    inits = [load_tensors(paths.replicate(r).init)["fc1.weight"] for r in range(3)]
    assert not torch.equal(inits[0], inits[1]) and not torch.equal(inits[1], inits[2])
    for entry in rounds:
        accuracies = [rep["ticket"]["accuracy"] for rep in entry["replicates"]]
        assert [rep["replicate"] for rep in entry["replicates"]] == [0, 1, 2]
        stats = entry["stats"]["ticket"]
        assert stats["n"] == 3
        assert stats["accuracy_mean"] == pytest.approx(sum(accuracies) / 3)
        mean = sum(accuracies) / 3
        std = (sum((a - mean) ** 2 for a in accuracies) / 3) ** 0.5
        assert stats["accuracy_std"] == pytest.approx(std)
        assert entry["ticket"] == entry["replicates"][0]["ticket"]  # top level is replicate 0
    assert summary.ticket_accuracy == pytest.approx(
        rounds[summary.ticket_round]["stats"]["ticket"]["accuracy_mean"]
    )
    for r in range(3):  # every replicate's ticket is there: its rewind weights times its mask
        chain = paths.replicate(r)
        ticket, mask, init = (load_tensors(p) for p in (chain.ticket, chain.final_mask, chain.init))
        assert torch.equal(ticket["fc1.weight"], init["fc1.weight"] * mask["fc1.weight"])


def test_one_replicate_results_do_not_depend_on_the_others(tmp_path: Path) -> None:
    """Replicate 0 of a 2-replicate job is the 1-replicate job (same seed), bit for bit."""
    one = make_spec(pruning={"controls": ["random_reinit"]})
    two = make_spec(pruning={"controls": ["random_reinit"]}, replicates=2)
    run(one, tmp_path / "one", CONFIG)
    run(two, tmp_path / "two", CONFIG)
    a, b = RunPaths(tmp_path / "one"), RunPaths(tmp_path / "two")
    for k in (0, 1, 2):
        assert_same_tensors(load_tensors(a.trained(k)), load_tensors(b.trained(k)))


def test_stacks_are_split_to_fit_the_parameter_budget(tmp_path: Path) -> None:
    spec = make_spec(pruning={"controls": ["random_reinit", "random_prune"]}, replicates=2)
    imp = IMPRun(spec, tmp_path, CONFIG, threads=lambda: 1)
    imp.max_stack = 4
    events: list[Progress] = []
    imp.on_progress = events.append
    imp.run()
    execution = {p.info["round"]: p.info for p in events if p.event == "execution"}
    assert execution[0]["stacks"] == [2]
    assert execution[1]["stacks"] == [3, 3]  # as even as the budget allows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stacked_training_on_cuda_matches_the_cpu_run(tmp_path: Path, precision: str) -> None:
    """The CUDA path (stacked, fused optimizer, autocast) gives the CPU's numbers within
    float (fp32) or bf16 rounding."""
    on_cuda = make_spec(
        training={"precision": precision, "device": "cuda"},
        pruning={"controls": ["random_reinit"]},
        replicates=2,
    )
    on_cpu = make_spec(
        training={"precision": precision, "device": "cpu"},
        pruning={"controls": ["random_reinit"]},
        replicates=2,
    )
    cuda = run(on_cuda, tmp_path / "cuda", CONFIG)
    cpu = run(on_cpu, tmp_path / "cpu", CONFIG)
    tolerance = 0.02 if precision == "fp32" else 0.08
    assert abs(cuda.ticket_accuracy - cpu.ticket_accuracy) <= tolerance
    manifest = read_json(RunPaths(tmp_path / "cuda").manifest)
    assert manifest["device"].startswith("cuda")
