"""From stored examples to model inputs: scale uint8 to [0, 1], then standardise.

The mean and std come from the training split after the validation hold-out, so neither the
validation nor the test examples leak into preprocessing; all three splits share them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


def to_unit(x: Tensor, *, owned: bool = False) -> Tensor:
    """float32 examples; uint8 pixels are scaled to [0, 1].

    Never aliases ``x`` unless ``owned`` says the caller is done with it, so a float32 batch that
    was just gathered is scaled in place instead of copied once more.
    """
    unit = x.to(torch.float32, copy=not owned)
    return unit.div_(255) if x.dtype == torch.uint8 else unit


@dataclass(frozen=True)
class Preprocess:
    """Moves a batch of stored examples to the device as normalised float32.

    Applied per batch, so the splits can stay in their stored dtype; ``mean`` and ``std`` live
    on the device already, making it one copy and a few in-place elementwise ops.
    """

    device: torch.device
    mean: Tensor | None = None  # broadcastable to a batch; None: no standardisation
    std: Tensor | None = None

    def __post_init__(self) -> None:
        # Standardising is one fused multiply-add per batch, ``x * (1 / std) - mean / std``.
        # uint8 pixels are scaled to [0, 1] first, exactly as a float32 source holds them, so
        # the two give bit-identical batches.
        if self.mean is not None and self.std is not None:
            object.__setattr__(self, "_affine", (1 / self.std, -self.mean / self.std))

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` normalised on the device; ``x`` itself (a view of a split, say) is untouched."""
        return self._normalised(x.to(self.device, non_blocking=True), owned=False)

    def fresh(self, x: Tensor) -> Tensor:
        """As calling it, but may write into ``x``: for a batch its caller has just gathered."""
        return self._normalised(x.to(self.device, non_blocking=True), owned=True)

    def _normalised(self, x: Tensor, owned: bool) -> Tensor:
        affine: tuple[Tensor, Tensor] | None = getattr(self, "_affine", None)
        if affine is None:
            return to_unit(x, owned=owned)
        scale, shift = affine
        # to_unit may hand back float32 ``x`` itself: addcmul writes a new tensor anyway.
        return torch.addcmul(shift, to_unit(x, owned=True), scale)

    def black(self, channels: int) -> Tensor:
        """The value of a zero (black) pixel after preprocessing, shaped (1, C, 1, 1)."""
        zero = torch.zeros(1, channels, 1, 1, device=self.device)
        return self(zero)


class RunningStats:
    """Per-channel mean and std over batches (Chan et al.'s merge, in float64), in one pass.

    Images (N, C, H, W) get one mean/std per channel; flat features (N, F) one global pair.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = torch.zeros(())
        self.m2 = torch.zeros(())

    def add(self, x: Tensor) -> None:
        rows = x.double()
        rows = rows.transpose(0, 1).reshape(x.shape[1], -1) if x.ndim == 4 else rows.reshape(1, -1)
        count = rows.shape[1]
        mean = rows.mean(dim=1)
        m2 = ((rows - mean[:, None]) ** 2).sum(dim=1)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def preprocess(self, device: torch.device, images: bool) -> Preprocess:
        std = (self.m2 / max(self.count, 1)).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays as is
        shape = (1, -1, 1, 1) if images else ()
        return Preprocess(
            device,
            self.mean.float().reshape(shape).to(device),
            std.float().reshape(shape).to(device),
        )


def fit(batches: Iterable[Tensor], device: torch.device, images: bool) -> Preprocess:
    """A Preprocess standardising with the statistics of ``batches`` (already in [0, 1])."""
    stats = RunningStats()
    for batch in batches:
        stats.add(batch)
    return stats.preprocess(device, images)
