"""Parameter counts of the built-in architectures for a given input, by arithmetic alone.

A model too large to build must be refused before anything allocates it: the service checks the
count at submission (it must not import torch) and the engine before it builds. The counts
follow the engine's builders layer by layer, as open_lth defines the networks (batch norm in
VGG and ResNet, conv biases in VGG and Conv-N only); the engine's tests compare them with the
models it builds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

#: Default of ``LTH_MAX_PARAMETERS``: the largest model, in parameters, a job may build.
MAX_PARAMETERS = 200_000_000

#: VGG conv widths; 'M' is a 2x2 max pool (open_lth's ``cifar_vgg``).
VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512),
    ],
}
#: Conv-N: the channels of each pair of 3x3 convs, each pair followed by a 2x2 max pool.
CONV_PAIRS: dict[str, list[int]] = {"conv2": [64], "conv4": [64, 128], "conv6": [64, 128, 256]}
#: ResNet depth of each name; ``(depth - 2) // 6`` blocks per stage.
RESNET_DEPTHS: dict[str, int] = {"resnet20": 20, "resnet56": 56}
RESNET_WIDTH = 16
LENET_HIDDEN = [300, 100]
FC_HIDDEN = [256, 256]  # Conv-N's fully connected layers


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(n_in: int, n_out: int, kernel: int = 3, bias: bool = True) -> int:
    return n_in * n_out * kernel * kernel + (n_out if bias else 0)


def _mlp(sizes: Sequence[int]) -> int:
    return sum(_linear(a, b) for a, b in itertools.pairwise(sizes))


def _conv_net(pairs: list[int], shape: tuple[int, int, int], classes: int) -> int:
    channels, height, width = shape
    total = 0
    for filters in pairs:
        total += _conv(channels, filters) + _conv(filters, filters)
        channels, height, width = filters, height // 2, width // 2
    return total + _mlp([channels * height * width, *FC_HIDDEN, classes])


def _vgg(plan: list[int | str], channels: int, classes: int) -> int:
    total = 0
    for item in plan:
        if isinstance(item, int):
            total += _conv(channels, item) + 2 * item  # conv with bias, batch norm
            channels = item
    return total + _linear(channels, classes)


def _resnet(depth: int, channels: int, width: int, classes: int) -> int:
    def bn(n: int) -> int:
        return 2 * n

    total = _conv(channels, width, bias=False) + bn(width)
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for block in range((depth - 2) // 6):
            total += _conv(channels, out, bias=False) + _conv(out, out, bias=False) + 2 * bn(out)
            if (stage > 0 and block == 0) or channels != out:  # the projection shortcut
                total += _conv(channels, out, kernel=1, bias=False) + bn(out)
            channels = out
    return total + _linear(channels, classes)


def parameter_count(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden_sizes: Sequence[int] | None = None,
    width: int | None = None,
) -> int | None:
    """Parameters (weights, biases, batch-norm scales and shifts) of the built-in ``arch`` for
    examples of ``input_shape`` (no batch dimension) and ``num_classes``.

    None where arithmetic cannot tell: a ``torchvision:`` model (the engine counts it on the
    meta device), an unknown name, or an input the architecture cannot take (its builder
    refuses it). Each count grows with every dimension, so the smallest conceivable input gives
    a lower bound when the real one is unknown.
    """
    if arch == "lenet_300_100":
        return _mlp([math.prod(input_shape), *LENET_HIDDEN, num_classes])
    if arch == "mlp":
        return _mlp([math.prod(input_shape), *(hidden_sizes or []), num_classes])
    if len(input_shape) != 3:
        return None
    channels, height, side = (int(n) for n in input_shape)
    if arch in CONV_PAIRS:
        return _conv_net(CONV_PAIRS[arch], (channels, height, side), num_classes)
    if arch in VGG_PLANS:
        return _vgg(VGG_PLANS[arch], channels, num_classes)
    if arch in RESNET_DEPTHS:
        return _resnet(RESNET_DEPTHS[arch], channels, width or RESNET_WIDTH, num_classes)
    return None
