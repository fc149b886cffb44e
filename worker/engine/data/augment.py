"""CIFAR-style augmentation for a whole batch at once, on the batch's device.

A 4-pixel padded random crop and a random horizontal flip (He et al. 2016), done as one gather
instead of a Python loop over examples. The random numbers are drawn on the CPU from the caller's
generator, so a given (seed, step) augments identically on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from worker.engine.data.order import generator
from worker.engine.errors import DataError

PAD = 4


def crop_and_flip(x: Tensor, generator: torch.Generator, fill: Tensor | None = None) -> Tensor:
    """Randomly crop each image of ``x`` (N, C, H, W) from its padded version, and flip half.

    ``fill`` (broadcastable to (1, C, 1, 1)) is the padding value; the default 0. Pass the
    normalised value of a black pixel to pad as torchvision does before normalisation.
    """
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)

    padded = x.new_zeros(n, c, h + 2 * PAD, w + 2 * PAD)
    if fill is not None:
        padded.copy_(fill.expand_as(padded))
    padded[:, :, PAD : PAD + h, PAD : PAD + w] = x

    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class Augmenter:
    """Augments the batch of training step ``step`` with randomness seeded by (seed, step)."""

    def __init__(self, seed: int, fill: Tensor | None) -> None:
        self.seed = seed
        self.fill = fill

    def __call__(self, x: Tensor, step: int) -> Tensor:
        return crop_and_flip(x, generator("augment", self.seed, step), self.fill)


def require_images(input_shape: tuple[int, ...], source: str) -> None:
    """Cropping and flipping need C x H x W examples; flat features cannot be augmented."""
    if len(input_shape) != 3:
        raise DataError(
            f"{source}: augment needs image examples (C, H, W), but these have shape "
            f"{input_shape}; set augment to false"
        )
