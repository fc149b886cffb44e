"""Any torchvision classification model, untrained, as ``torchvision:<name>``."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torchvision
from torch import nn

from worker.engine.errors import ModelError
from worker.engine.models.base import count_parameters

#: Extra constructor arguments. GoogLeNet and Inception-v3 return auxiliary logits in training
#: mode, which the engine's loss does not expect; ``init_weights=True`` keeps torchvision's
#: current initialisation and silences its warning that the default will change.
EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def classification_models() -> list[str]:
    """The names ``torchvision:<name>`` accepts: torchvision's top-level (classification) models,
    not its detection, segmentation, video, optical-flow or quantized ones."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=...)``, never pretrained.

    Torchvision's classifiers expect 3-channel images. For any other channel count (e.g. 1 for
    MNIST) the first conv layer is replaced by a freshly initialised one with the same settings
    but that many input channels, so the rest of the network is unchanged.
    """
    if name not in classification_models():
        known = name in torchvision.models.list_models()
        kind = "is not a classification model" if known else "is not a torchvision model"
        raise ModelError(
            f"torchvision:{name} {kind}; valid names are those of "
            "torchvision.models.list_models(module=torchvision.models), e.g. torchvision:resnet18"
        )
    if len(input_shape) != 3:
        raise ModelError(
            f"torchvision:{name} needs image inputs of shape (channels, height, width), but the "
            f"dataset's examples have shape {tuple(input_shape)}"
        )
    model = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **EXTRA_KWARGS.get(name, {})
    )
    if not isinstance(model, nn.Module):  # torchvision is untyped; keep mypy and callers honest
        raise ModelError(f"torchvision:{name} did not build a torch module")
    if input_shape[0] != 3:
        _replace_first_conv(model, name, input_shape[0])
    return model


@functools.lru_cache(maxsize=64)
def meta_parameters(name: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameters ``build_torchvision`` would allocate, counted without allocating them.

    The model is built on the meta device, where tensors have shapes but no storage; a
    constructor that reads tensor values (RegNet computes its widths with tensors) cannot run
    there, so it runs on the CPU with each parameter moved to the meta device as it is
    registered: one layer at a time is allocated, never the model. Either way no random number
    is drawn, so the real model built next is the one built without counting.
    """
    try:
        with torch.device("meta"):
            return count_parameters(build_torchvision(name, input_shape, num_classes))
    except NotImplementedError:
        with parameters_on_meta():
            return count_parameters(build_torchvision(name, input_shape, num_classes))


_PATCH = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Parameters this thread registers meanwhile are moved to the meta device; other threads
    (training lanes building their models) register theirs as usual."""
    owner = threading.get_ident()
    with _PATCH:
        register = nn.Module.register_parameter

        def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            if param is not None and not param.is_meta and threading.get_ident() == owner:
                param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            register(module, name, param)

        nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            nn.Module.register_parameter = register  # type: ignore[method-assign]


def _replace_first_conv(model: nn.Module, name: str, channels: int) -> None:
    """Swap the first 3-channel Conv2d (the stem; first in registration order in every torchvision
    classifier) for one taking ``channels`` inputs."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            conv = nn.Conv2d(
                channels,
                module.out_channels,
                kernel_size=_pair(module.kernel_size),
                stride=_pair(module.stride),
                padding=module.padding
                if isinstance(module.padding, str)
                else _pair(module.padding),
                dilation=_pair(module.dilation),
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, conv)
            return
    raise ModelError(f"torchvision:{name} has no 3-channel input conv to adapt to {channels}")


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    return value[0], value[1]
