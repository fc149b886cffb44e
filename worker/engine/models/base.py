"""What every model module shares: the builder signature, the output-layer convention and the
input-shape checks, so each architecture states its needs in one line."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from api_schemas.spec import ModelSpec
from worker.engine.errors import ModelError

#: Builds an untrained model from the spec, one example's input shape (no batch dimension, e.g.
#: ``(1, 28, 28)`` or ``(40,)``) and the number of classes.
Builder = Callable[[ModelSpec, tuple[int, ...], int], nn.Module]

#: The layers the engine prunes and among which it finds the output layer.
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def output_layer(model: nn.Module) -> str:
    """The name of the output layer: the last Linear or Conv module in ``named_modules()`` order.

    The engine prunes this layer at its own (lower) rate, so every model must register its
    classifier last; ``build_model`` checks it.
    """
    names: list[str] = [
        name for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)
    ]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv layer to use as output")
    return names[-1]


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def image_shape(arch: str, input_shape: tuple[int, ...], min_side: int = 1) -> tuple[int, int, int]:
    """Split an image input shape, or raise a ModelError saying what ``arch`` needs."""
    if len(input_shape) != 3:
        raise ModelError(
            f"{arch} needs image inputs of shape (channels, height, width), but the dataset's "
            f"examples have shape {tuple(input_shape)}; use lenet_300_100 or mlp for flat inputs"
        )
    channels, height, width = input_shape
    if min(height, width) < min_side:
        raise ModelError(
            f"{arch} needs images of at least {min_side}x{min_side} pixels, "
            f"but the dataset's are {height}x{width}"
        )
    return channels, height, width
