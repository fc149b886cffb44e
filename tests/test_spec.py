"""The job spec contract: the minimal spec, paper defaults, and errors naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api_schemas.examples import minimal_spec
from api_schemas.spec import JobSpec
from api_schemas.steps import StepCount, to_iterations

MINIMAL = minimal_spec()


def errors_of(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    return {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}


def test_minimal_spec_is_accepted_with_paper_defaults() -> None:
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.pruning.rates.linear == 0.2 and spec.pruning.rates.conv == 0.1
    assert spec.pruning.rates.output is None  # half the layer type's rate
    assert spec.pruning.retrain == "weight_rewind"
    bare = JobSpec.model_validate(
        {"model": {"arch": "lenet_300_100"}, "dataset": {"uri": "idx:///d"}}
    )
    assert (bare.training.optimizer, bare.training.lr, bare.training.batch_size) == (
        "adam",
        1.2e-3,
        60,
    )
    assert bare.training.steps == "50000it" and bare.dataset.validation_size == 5000


def test_spec_hash_is_stable_and_sensitive() -> None:
    a = JobSpec.model_validate(MINIMAL)
    assert a.spec_hash() == JobSpec.model_validate(MINIMAL).spec_hash()
    assert a.spec_hash() != JobSpec.model_validate({**MINIMAL, "seed": 1}).spec_hash()


@pytest.mark.parametrize(
    ("patch", "field", "needle"),
    [
        ({"model": {"arch": "lenet5"}}, "model.arch", "unknown architecture"),
        ({"dataset": {"uri": "ftp://x"}}, "dataset.uri", "unknown dataset scheme"),
        ({"dataset": {"uri": "torchvision://ImageNet"}}, "dataset.uri", "unknown torchvision"),
        ({"training": {"steps": "30 epochs"}}, "training.steps", "'500it' or '20ep'"),
        ({"training": {"optimzer": "sgd"}}, "training.optimzer", "Extra inputs"),
        ({"pruning": {"rewind_to": "400it"}}, "pruning.rewind_to", "before the end of training"),
        ({"pruning": {"rates": {"linear": 1.5}}}, "pruning.rates.linear", "less than 1"),
        ({"pruning": {"one_shot": True}}, "pruning.target_density", "needs target_density"),
        ({"model": {"arch": "mlp"}}, "model.hidden_sizes", "needs hidden_sizes"),
        ({"model": {"arch": "conv2", "width": 8}}, "model.width", "resnet20/resnet56 only"),
        ({"training": {"schedule": "multistep"}}, "training.milestones", "needs milestones"),
        ({"training": {"eval_every": "0it"}}, "training.eval_every", "at least one"),
        ({"training": {"batch_size": 10**9}}, "training.batch_size", "less than or equal"),
        ({"dataset": {"uri": "synthetic://?classes=abc"}}, "dataset.uri", "not numbers"),
        ({"dataset": {"uri": "synthetic://?classes=1"}}, "dataset.uri", "classes >= 2"),
    ],
)
def test_invalid_specs_name_the_field(
    patch: dict[str, dict[str, object]], field: str, needle: str
) -> None:
    data = {
        key: dict(value) if isinstance(value, dict) else value for key, value in MINIMAL.items()
    }
    for section, values in patch.items():
        data[section] = {**data[section], **values}  # type: ignore[dict-item]
    errors = errors_of(data)
    assert field in errors, errors
    assert needle in errors[field]


def test_step_strings() -> None:
    assert StepCount.parse(" 20ep ") == StepCount(20, "ep")
    assert to_iterations("2ep", 916) == 1832
    assert to_iterations("500it", 916) == 500
    with pytest.raises(ValueError, match="'500it' or '20ep'"):
        StepCount.parse("1.5ep")


def test_values_are_not_coerced() -> None:
    errors = errors_of({**MINIMAL, "seed": "0"})
    assert "seed" in errors


def test_yaml_specs_read_scientific_notation_as_numbers() -> None:
    from api_schemas.specfile import parse_spec_text

    text = "model: {arch: lenet_300_100}\ndataset: {uri: 'idx:///d'}\ntraining: {lr: 1e-3}\n"
    spec = JobSpec.model_validate(parse_spec_text(text))
    assert spec.training.lr == 0.001
    with pytest.raises(ValueError, match="Expecting value"):
        parse_spec_text("lr: 1e-3", json_only=True)
