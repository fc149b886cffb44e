"""ResNets for CIFAR-10 (He et al. 2016, section 4.2) as open_lth's ``cifar_resnet_N[_W]``:
same layers, names and parameter counts, so open_lth state dicts load unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from api_schemas.spec import ModelSpec
from worker.engine.models.base import Builder, image_shape

DEFAULT_WIDTH = 16


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut, then ReLU; the shortcut is a strided 1x1 conv with
    batch norm where the shape changes (He et al.'s option B) and the identity elsewhere."""

    def __init__(self, f_in: int, f_out: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(f_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` blocks (widths w, 2w, 4w; the 2nd and 3rd halve the
    resolution), global average pooling and ``fc``."""

    def __init__(self, in_channels: int, width: int, blocks: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        filters = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                layers.append(Block(filters, stage_width, downsample=stage > 0 and index == 0))
                filters = stage_width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        # open_lth pools with a kernel of the (square) map's size; adaptive pooling is the same
        # there and also covers non-square inputs.
        out = F.adaptive_avg_pool2d(self.blocks(out), 1).flatten(1)
        logits: torch.Tensor = self.fc(out)
        return logits


def _builder(arch: str, depth: int) -> Builder:
    def build(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        channels, _, _ = image_shape(arch, input_shape)
        return ResNet(channels, spec.width or DEFAULT_WIDTH, (depth - 2) // 6, num_classes)

    build.__doc__ = f"{arch}: open_lth's cifar_resnet_{depth}[_width] (see ``ResNet``)."
    return build


resnet20 = _builder("resnet20", 20)
resnet56 = _builder("resnet56", 56)
