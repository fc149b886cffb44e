"""Model sizes are checked before the engine allocates a model: built-in architectures by the
shared arithmetic (``api_schemas.model_size``), torchvision ones on the meta device."""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from api_schemas.model_size import MAX_PARAMETERS, parameter_count
from api_schemas.spec import ARCHITECTURES, JobSpec, ModelSpec
from worker.engine.data import DataConfig
from worker.engine.errors import ModelError
from worker.engine.imp import IMPRun
from worker.engine.models import build_model, count_parameters
from worker.engine.models.torchvision_models import (
    build_torchvision,
    meta_parameters,
    parameters_on_meta,
)

MiB = 1024  # ru_maxrss is in KiB on Linux


def _spec(arch: str, **options: object) -> ModelSpec:
    return ModelSpec.model_validate({"arch": arch, **options})


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MiB


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_arithmetic_is_the_built_models_count(arch: str) -> None:
    hidden = [13, 7] if arch == "mlp" else None
    cases = [((3, 32, 32), 10, None), ((1, 32, 40), 7, 8), ((2, 33, 35), 3, None)]
    if arch in ("lenet_300_100", "mlp"):
        cases.append(((40,), 2, None))
    for shape, classes, width in cases:
        width = width if arch.startswith("resnet") else None
        options = {"hidden_sizes": hidden} if hidden else {"width": width} if width else {}
        spec = _spec(arch, **options)
        count = parameter_count(arch, shape, classes, hidden_sizes=hidden, width=width)
        assert count == count_parameters(build_model(spec, shape, classes)), (shape, classes)


@pytest.mark.parametrize(
    ("spec", "shape", "says"),
    [
        # 784 x 1e6 weights: 3 GB of float32 had the count come after the build.
        (_spec("mlp", hidden_sizes=[1_000_000]), (1, 28, 28), "795,000,010 parameters"),
        (_spec("resnet20", width=4096), (3, 32, 32), "resnet20 would have"),
        (_spec("conv2"), (3, 1024, 1024), "(3, 1024, 1024)"),
        # 630M parameters (2.5 GB) built before the limit was checked.
        (_spec("torchvision:vit_h_14"), (3, 32, 32), "630,777,610 parameters"),
        # RegNet reads tensor values while it is built, so it is counted layer by layer.
        (_spec("torchvision:regnet_y_128gf"), (1, 32, 32), "torchvision:regnet_y_128gf"),
    ],
)
def test_too_large_models_are_refused_before_they_are_allocated(
    spec: ModelSpec, shape: tuple[int, ...], says: str
) -> None:
    before = _peak_rss_mib()
    with pytest.raises(ModelError, match=f"at most {MAX_PARAMETERS:,}") as refused:
        build_model(spec, shape, 10)
    assert says in str(refused.value)
    assert _peak_rss_mib() - before < 200


def test_the_limit_is_the_callers() -> None:
    with pytest.raises(ModelError, match=r"11,175,370 parameters.*at most 1,000,000"):
        build_model(_spec("torchvision:resnet18"), (1, 32, 32), 10, max_parameters=1_000_000)
    with pytest.raises(ModelError, match="266,610 parameters"):
        build_model(_spec("lenet_300_100"), (1, 28, 28), 10, max_parameters=266_609)
    assert count_parameters(build_model(_spec("lenet_300_100"), (1, 28, 28), 10)) == 266_610


@pytest.mark.parametrize(
    ("name", "shape"),
    [("resnet18", (1, 32, 32)), ("squeezenet1_1", (3, 32, 32)), ("regnet_x_400mf", (3, 32, 32))],
)
def test_meta_counts_are_the_real_ones(name: str, shape: tuple[int, int, int]) -> None:
    register = nn.Module.register_parameter
    assert meta_parameters(name, shape, 7) == count_parameters(build_torchvision(name, shape, 7))
    # Counting leaves nothing behind: models built afterwards are real.
    assert nn.Module.register_parameter is register
    assert not any(p.is_meta for p in nn.Linear(2, 2).parameters())


@pytest.mark.parametrize("name", ["squeezenet1_1", "regnet_x_400mf"])
def test_counting_draws_no_random_numbers(name: str) -> None:
    meta_parameters.cache_clear()
    torch.manual_seed(0)
    counted = build_model(_spec(f"torchvision:{name}"), (3, 32, 32), 10).state_dict()
    torch.manual_seed(0)
    plain = build_torchvision(name, (3, 32, 32), 10).state_dict()
    assert all(torch.equal(counted[key], plain[key]) for key in plain)


def test_other_threads_build_real_models_while_one_counts() -> None:
    built: list[nn.Module] = []
    with parameters_on_meta():
        worker = threading.Thread(target=lambda: built.append(nn.Linear(3, 2)))
        worker.start()
        worker.join()
        assert nn.Linear(3, 2).weight.is_meta
    assert not any(p.is_meta for p in built[0].parameters())


def test_a_job_with_a_model_too_large_fails_before_allocating(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [1_000_000]},
            "dataset": {
                "uri": "synthetic://?classes=10&shape=1,28,28&train=60&test=20",
                "validation_size": 0,
            },
            "training": {"batch_size": 10, "steps": "2it", "eval_every": "1it"},
        }
    )
    before = _peak_rss_mib()
    with pytest.raises(ModelError, match="mlp would have 795,000,010 parameters"):
        IMPRun(spec, tmp_path / "out", DataConfig(roots=()))
    assert _peak_rss_mib() - before < 200
