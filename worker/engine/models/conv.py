"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of Frankle & Carbin 2019
(Figure 2), which open_lth does not include."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from api_schemas.spec import ModelSpec
from worker.engine.models.base import Builder, image_shape

#: The channels of each conv pair; every pair is followed by a 2x2 max pool.
PLANS: dict[str, list[int]] = {"conv2": [64], "conv4": [64, 128], "conv6": [64, 128, 256]}


def conv_net(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pairs of 3x3 convs (padding 1) with ReLU, a max pool per pair, then fc 256-256-classes.

    The flatten size follows the input, so the nets run on 28x28 as well as 32x32 images.
    """
    plan = PLANS[arch]
    channels, height, width = image_shape(arch, input_shape, min_side=2 ** len(plan))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for pair, filters in enumerate(plan, start=1):
        for conv in (2 * pair - 1, 2 * pair):
            layers[f"conv{conv}"] = nn.Conv2d(channels, filters, kernel_size=3, padding=1)
            layers[f"relu{conv}"] = nn.ReLU()
            channels = filters
        layers[f"pool{pair}"] = nn.MaxPool2d(kernel_size=2, stride=2)
        height, width = height // 2, width // 2
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(channels * height * width, 256)
    layers["fc_relu1"] = nn.ReLU()
    layers["fc2"] = nn.Linear(256, 256)
    layers["fc_relu2"] = nn.ReLU()
    layers["fc3"] = nn.Linear(256, num_classes)
    return nn.Sequential(layers)


def _builder(arch: str) -> Builder:
    def build(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return conv_net(arch, input_shape, num_classes)

    build.__doc__ = f"{arch}: Frankle & Carbin 2019, Figure 2 (see ``conv_net``)."
    return build


conv2 = _builder("conv2")
conv4 = _builder("conv4")
conv6 = _builder("conv6")
