"""VGG for CIFAR-10 with batch norm and a single linear output layer, as open_lth's
``cifar_vgg_N`` (Frankle et al. 2020): same layers, names and parameter counts, so open_lth
state dicts load unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from api_schemas.spec import ModelSpec
from worker.engine.models.base import Builder, image_shape

#: Conv widths; 'M' is a 2x2 max pool. From open_lth's ``cifar_vgg.get_model_from_name``.
PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512),
    ],
}


class ConvModule(nn.Module):
    """3x3 conv (with bias, as open_lth) + batch norm + ReLU."""

    def __init__(self, in_filters: int, out_filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_filters, out_filters, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """The conv stack, global average pooling, and ``fc``.

    open_lth pools the 2x2 map left of a 32x32 input with ``AvgPool2d(2)``; adaptive pooling to
    1x1 is the same there and lets other image sizes reach the 512-input ``fc`` too.
    """

    def __init__(self, plan: list[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        filters = in_channels
        for step in plan:
            if isinstance(step, int):
                layers.append(ConvModule(filters, step))
                filters = step
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)
        out: torch.Tensor = self.fc(x)
        return out


def _builder(arch: str) -> Builder:
    def build(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        plan = PLANS[arch]
        channels, _, _ = image_shape(arch, input_shape, min_side=2 ** plan.count("M"))
        return VGG(plan, channels, num_classes)

    build.__doc__ = f"{arch}: open_lth's cifar_vgg_{arch[3:]} (see ``VGG``)."
    return build


vgg11 = _builder("vgg11")
vgg13 = _builder("vgg13")
vgg16 = _builder("vgg16")
vgg19 = _builder("vgg19")
