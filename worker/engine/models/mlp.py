"""Fully connected networks: LeNet-300-100 and the general multi-layer perceptron."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from api_schemas.spec import ModelSpec


def mlp_layers(
    input_shape: tuple[int, ...], hidden_sizes: list[int], num_classes: int
) -> nn.Module:
    """Flatten, then ``fc1 .. fcN`` with ReLU between; ``fcN`` is the output layer.

    Named layers (``fc1.weight``, ...) keep state-dict keys readable in masks and weight files.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = math.prod(input_shape)
    for index, hidden in enumerate(hidden_sizes, start=1):
        layers[f"fc{index}"] = nn.Linear(width, hidden)
        layers[f"relu{index}"] = nn.ReLU()
        width = hidden
    layers[f"fc{len(hidden_sizes) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def lenet_300_100(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998) as in Frankle & Carbin 2019, Figure 2: 266,610
    parameters on MNIST, as open_lth's ``mnist_lenet_300_100``."""
    return mlp_layers(input_shape, [300, 100], num_classes)


def mlp(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A ReLU perceptron with ``spec.hidden_sizes``, e.g. MNIST-1D's 40-500-500-10
    (Greydanus & Kobak)."""
    # The spec validator requires hidden_sizes for 'mlp'; the check keeps direct callers honest.
    if not spec.hidden_sizes:
        raise ValueError("arch 'mlp' needs hidden_sizes")
    return mlp_layers(input_shape, list(spec.hidden_sizes), num_classes)
