"""The built-in architectures with parameter counts worked out by arithmetic (no torch here).

Counts are for the reference input (1×28×28 for the fully connected nets, 3×32×32 for the
conv nets) and 10 classes, following the architectures' published definitions (open_lth's for
VGG and ResNet: batch norm everywhere, conv biases in VGG only). The worker reports the exact
count of the model it builds.
"""

from __future__ import annotations

import itertools

from api_schemas.jobs import ModelInfo
from api_schemas.spec import ARCHITECTURES

CLASSES = 10
MNIST_INPUT = [1, 28, 28]
CIFAR_INPUT = [3, 32, 32]

_VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512),
    ],
}
_CONV_PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(n_in: int, n_out: int, kernel: int = 3, bias: bool = True) -> int:
    return n_in * n_out * kernel * kernel + (n_out if bias else 0)


def _mlp(sizes: list[int]) -> int:
    return sum(_linear(a, b) for a, b in itertools.pairwise(sizes))


def _conv_net(plan: list[int | str]) -> int:
    channels, side, total = 3, 32, 0
    for item in plan:
        if item == "M":
            side //= 2
        else:
            assert isinstance(item, int)
            total += _conv(channels, item)
            channels = item
    return total + _mlp([channels * side * side, 256, 256, CLASSES])


def _vgg(plan: list[int | str]) -> int:
    channels, total = 3, 0
    for item in plan:
        if isinstance(item, int):
            total += _conv(channels, item) + 2 * item  # conv with bias, batch norm
            channels = item
    return total + _linear(channels, CLASSES)


def _resnet(depth: int, width: int) -> int:
    blocks = (depth - 2) // 6
    total = _conv(3, width, bias=False) + 2 * width
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for block in range(blocks):
            n_in = channels if block == 0 else out
            total += _conv(n_in, out, bias=False) + 2 * out + _conv(out, out, bias=False) + 2 * out
            if n_in != out:
                total += _conv(n_in, out, kernel=1, bias=False) + 2 * out
        channels = out
    return total + _linear(channels, CLASSES)


def reference_parameters(arch: str, width: int | None = None) -> int | None:
    """Trainable parameters of ``arch`` for its reference input; None if options decide it."""
    if arch == "lenet_300_100":
        return _mlp([784, 300, 100, CLASSES])
    if arch in _CONV_PLANS:
        return _conv_net(_CONV_PLANS[arch])
    if arch in _VGG_PLANS:
        return _vgg(_VGG_PLANS[arch])
    if arch.startswith("resnet"):
        return _resnet(int(arch.removeprefix("resnet")), width or 16)
    return None


def _options(arch: str) -> list[str]:
    if arch == "mlp":
        return ["hidden_sizes", "weights"]
    if arch.startswith("resnet"):
        return ["width", "weights"]
    return ["weights"]


def catalog() -> list[ModelInfo]:
    """Every built-in architecture, in registry order."""
    return [
        ModelInfo(
            name=arch,
            description=description,
            parameters=reference_parameters(arch),
            reference_input=MNIST_INPUT if arch in ("lenet_300_100", "mlp") else CIFAR_INPUT,
            options=_options(arch),
        )
        for arch, description in ARCHITECTURES.items()
    ]
