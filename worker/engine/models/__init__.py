"""The model registry: every architecture a job can name, built for its dataset's input shape.

``REGISTRY`` holds exactly the built-in names of ``api_schemas.spec.ARCHITECTURES``;
``torchvision:<name>`` reaches any torchvision classification model and ``model.uri`` a user's own
ONNX graph (:mod:`worker.engine.models.onnx_model`). Every built model registers
its classifier as its last Linear/Conv module, which the engine treats as the output layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from api_schemas.confine import PathRefusedError, location_path
from api_schemas.model_size import MAX_PARAMETERS, parameter_count
from api_schemas.spec import TORCHVISION_PREFIX, UPLOADED_ARCH, ModelSpec
from worker.engine.errors import ModelError
from worker.engine.models import cifar_resnet, cifar_vgg, conv, mlp
from worker.engine.models.base import (
    LAYER_TYPES,
    Builder,
    count_parameters,
    output_layer,
)
from worker.engine.models.onnx_model import load_onnx_model
from worker.engine.models.torchvision_models import (
    build_torchvision,
    classification_models,
    meta_parameters,
)
from worker.engine.models.weights import load_weights

__all__ = [
    "LAYER_TYPES",
    "REGISTRY",
    "Builder",
    "build_model",
    "classification_models",
    "count_parameters",
    "load_weights",
    "output_layer",
]

REGISTRY: dict[str, Builder] = {
    "lenet_300_100": mlp.lenet_300_100,
    "mlp": mlp.mlp,
    "conv2": conv.conv2,
    "conv4": conv.conv4,
    "conv6": conv.conv6,
    "vgg11": cifar_vgg.vgg11,
    "vgg13": cifar_vgg.vgg13,
    "vgg16": cifar_vgg.vgg16,
    "vgg19": cifar_vgg.vgg19,
    "resnet20": cifar_resnet.resnet20,
    "resnet56": cifar_resnet.resnet56,
}


def build_model(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    max_parameters: int = MAX_PARAMETERS,
) -> nn.Module:
    """An untrained model for examples of ``input_shape`` (no batch dimension) and ``num_classes``.

    Its size is checked before anything is allocated (a built-in architecture is counted by
    arithmetic, a torchvision one on the meta device), so a model of more than
    ``max_parameters`` is a ModelError rather than gigabytes of memory. It is run once on a zero
    batch so that an input it cannot take fails here, as a ModelError naming the shape, rather
    than as a RuntimeError mid-training. ``spec.weights`` is not loaded: the caller resolves its
    path and calls ``load_weights``.
    """
    if num_classes < 1 or not input_shape or min(input_shape) < 1:
        raise ModelError(
            f"cannot build {spec.arch} for inputs of shape {tuple(input_shape)} "
            f"and {num_classes} classes"
        )
    if spec.arch.startswith(TORCHVISION_PREFIX):
        name = spec.arch[len(TORCHVISION_PREFIX) :]
        count = meta_parameters(name, tuple(input_shape), num_classes)
        _check_size(spec.arch, count, max_parameters, input_shape, num_classes)
        model = build_torchvision(name, input_shape, num_classes)
    elif spec.arch == UPLOADED_ARCH:
        model = load_onnx_model(_model_file(spec))
        _check_size(
            "the uploaded model", count_parameters(model), max_parameters, input_shape, num_classes
        )
    elif spec.arch in REGISTRY:
        shape, hidden, width = input_shape, spec.hidden_sizes, spec.width
        estimate = parameter_count(spec.arch, shape, num_classes, hidden_sizes=hidden, width=width)
        if estimate is None:  # not in the arithmetic: count it on the meta device
            with torch.device("meta"):
                estimate = count_parameters(REGISTRY[spec.arch](spec, input_shape, num_classes))
        _check_size(spec.arch, estimate, max_parameters, input_shape, num_classes)
        model = REGISTRY[spec.arch](spec, input_shape, num_classes)
    else:
        raise ModelError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(REGISTRY)}")
    _dry_run(model, spec.arch, input_shape, num_classes)
    _check_output_layer(model, spec.arch, num_classes)
    return model


def _model_file(spec: ModelSpec) -> Path:
    """The ONNX file of ``spec.uri``: a path by now (the worker resolves ``model://<id>``)."""
    try:
        return Path(location_path(spec.uri or ""))
    except PathRefusedError as error:
        raise ModelError(f"model.uri: {error}") from error


def _check_size(
    arch: str, count: int, limit: int, input_shape: tuple[int, ...], num_classes: int
) -> None:
    if count > limit:
        raise ModelError(
            f"{arch} would have {count:,} parameters for inputs of shape {tuple(input_shape)} "
            f"and {num_classes} classes; at most {limit:,} may be built: use a smaller model"
        )


def _dry_run(model: nn.Module, arch: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Forward a zero batch of 2 in eval mode (batch norm needs no batch statistics there)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError, AssertionError, IndexError) as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
        raise ModelError(
            f"{arch} cannot run on inputs of shape {tuple(input_shape)} "
            f"(too small, or the wrong size or kind of input for it): {reason}"
        ) from error
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{arch} is not a classifier for these inputs: a batch of 2 gave {got}, "
            f"not logits of shape (2, {num_classes})"
        )


def _check_output_layer(model: nn.Module, arch: str, num_classes: int) -> None:
    """The engine prunes the last Linear/Conv as the output layer; it must be the classifier."""
    name = output_layer(model)
    layer = model.get_submodule(name)
    width = getattr(layer, "out_features", getattr(layer, "out_channels", None))
    if width != num_classes:
        raise ModelError(
            f"{arch}: its last Linear/Conv layer {name!r} has {width} outputs, not {num_classes}; "
            "the engine needs the classifier to be the last such layer"
        )
