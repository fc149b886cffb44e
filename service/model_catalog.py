"""The built-in architectures with parameter counts worked out by arithmetic (no torch here).

Counts are for the reference input (1×28×28 for the fully connected nets, 3×32×32 for the
conv nets) and 10 classes (see :mod:`api_schemas.model_size`). The worker reports the exact
count of the model it builds.
"""

from __future__ import annotations

from api_schemas.jobs import ModelInfo
from api_schemas.model_size import parameter_count
from api_schemas.spec import ARCHITECTURES

CLASSES = 10
MNIST_INPUT = [1, 28, 28]
CIFAR_INPUT = [3, 32, 32]


def reference_parameters(arch: str, width: int | None = None) -> int | None:
    """Trainable parameters of ``arch`` for its reference input; None if options decide it."""
    if arch == "mlp" or arch not in ARCHITECTURES:
        return None
    shape = MNIST_INPUT if arch == "lenet_300_100" else CIFAR_INPUT
    return parameter_count(arch, shape, CLASSES, width=width)


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
