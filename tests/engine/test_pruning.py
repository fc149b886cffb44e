"""Masks and magnitude pruning: exact fractions, the right weights, zeros that stay zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from api_schemas.spec import LayerRates, ModelSpec
from worker.engine.masks import (
    MaskEnforcer,
    apply_mask,
    dense_mask,
    density,
    prunable_layers,
    unknown_exclusions,
)
from worker.engine.models import build_model
from worker.engine.pruning import (
    layer_rate,
    prune_global,
    prune_layerwise,
    prune_to_density,
    random_mask_like,
)


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="lenet_300_100"), (1, 28, 28), 10)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_prunable_layers_are_linear_and_conv_weights_only() -> None:
    model = build_model(ModelSpec(arch="resnet20"), (3, 32, 32), 10)
    layers = prunable_layers(model)
    assert all(layer.key.endswith(".weight") for layer in layers)
    params = dict(model.named_parameters())
    assert all(params[layer.key].dim() in (2, 4) for layer in layers)  # no bias, no batch norm
    assert sum(layer.numel for layer in layers) == 270_896
    assert [layer.is_output for layer in layers].count(True) == 1
    assert layers[-1].is_output and layers[-1].kind == "linear"


def test_output_layer_is_pruned_at_half_rate_by_default() -> None:
    layers = prunable_layers(lenet())
    rates = LayerRates()
    assert [layer_rate(layer, rates) for layer in layers] == [0.2, 0.2, 0.1]
    assert layer_rate(layers[-1], LayerRates(output=0.3)) == 0.3


def test_layerwise_rounds_prune_exact_paper_fractions() -> None:
    model = lenet()
    layers = prunable_layers(model)
    mask = dense_mask(model)
    for _ in range(2):
        mask = prune_layerwise(weights(model), mask, layers, LayerRates())
        # Retraining would change the weights; pruning must only look at survivors either way.
        model.load_state_dict(apply_mask(model.state_dict(), mask))
    kept = {key: int(m.sum()) for key, m in mask.items()}
    assert kept == {"fc1.weight": 150_528, "fc2.weight": 19_200, "fc3.weight": 810}
    assert density(mask) == pytest.approx(170_538 / 266_200)  # 64.06%


def test_layerwise_removes_the_smallest_magnitudes_not_the_most_negative() -> None:
    layer = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-5, 5, 100).reshape(10, 10))
    model = nn.Sequential(layer, nn.Linear(10, 2))
    mask = prune_layerwise(weights(model), dense_mask(model), prunable_layers(model), LayerRates())
    magnitude = layer.weight.detach().abs()
    pruned, kept = magnitude[~mask["0.weight"]], magnitude[mask["0.weight"]]
    assert len(pruned) == 20
    assert pruned.max() <= kept.min()
    assert bool(mask["0.weight"][0, 0])  # -5, the largest magnitude, survives


def test_global_pruning_uses_one_threshold_over_all_layers() -> None:
    model = lenet()
    mask = dense_mask(model)
    w = weights(model)
    new = prune_global(w, mask, 0.2)
    total = sum(m.numel() for m in mask.values())
    assert total - sum(int(m.sum()) for m in new.values()) == round(0.2 * total)
    pruned = torch.cat([w[k][~m].abs() for k, m in new.items()])
    kept = torch.cat([w[k][m].abs() for k, m in new.items()])
    assert pruned.max() <= kept.min()
    # Layers shrink by different amounts: the threshold is shared, not the rate.
    per_layer = {k: float(m.float().mean()) for k, m in new.items()}
    assert len({round(v, 3) for v in per_layer.values()}) > 1


def test_pruning_only_removes_survivors() -> None:
    model = lenet()
    w = weights(model)
    first = prune_global(w, dense_mask(model), 0.5)
    second = prune_global(w, first, 0.5)  # same weights: the pruned ones must not be re-counted
    for key in first:
        assert not bool((second[key] & ~first[key]).any())
    assert sum(int(m.sum()) for m in second.values()) == round(
        0.5 * sum(int(m.sum()) for m in first.values())
    )


def test_exclude_keeps_layers_dense_and_unknown_names_are_reported() -> None:
    model = lenet()
    layers = prunable_layers(model, exclude=["fc3"])
    assert [layer.key for layer in layers] == ["fc1.weight", "fc2.weight"]
    assert unknown_exclusions(model, ["fc3", "fc9.weight"]) == ["fc9.weight"]


@pytest.mark.parametrize("strategy", ["global", "layerwise"])
def test_one_shot_reaches_the_target_density(strategy: str) -> None:
    model = lenet()
    mask = prune_to_density(
        weights(model),
        dense_mask(model),
        prunable_layers(model),
        0.1,
        strategy=strategy,
        rates=LayerRates(),
    )
    assert density(mask) == pytest.approx(0.1, abs=5e-5)
    if strategy == "layerwise":  # relative rates kept: the output layer is pruned less
        assert float(mask["fc3.weight"].float().mean()) > float(mask["fc1.weight"].float().mean())


def test_random_mask_keeps_each_layers_count_but_not_its_positions() -> None:
    model = lenet()
    mask = prune_layerwise(weights(model), dense_mask(model), prunable_layers(model), LayerRates())
    random = random_mask_like(mask, torch.Generator().manual_seed(1))
    for key in mask:
        assert int(random[key].sum()) == int(mask[key].sum())
        assert not torch.equal(random[key], mask[key])


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
    ],
    ids=["sgd-momentum-wd", "nesterov", "adam-wd", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_through_training(make_optimizer: object) -> None:
    model = lenet()
    mask = prune_layerwise(weights(model), dense_mask(model), prunable_layers(model), LayerRates())
    model.load_state_dict(apply_mask(model.state_dict(), mask))
    optimizer = make_optimizer(model.parameters())  # type: ignore[operator]
    enforce = MaskEnforcer(model, mask)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(32, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (32,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        enforce()
    params = dict(model.named_parameters())
    for key, m in mask.items():
        assert bool((params[key][~m] == 0).all()), key
        assert bool((params[key][m] != 0).all()), key  # survivors still train
