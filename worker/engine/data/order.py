"""Every random choice of the data layer, each a pure function of its seed.

Batches depend only on ``(seed, step)``, so a run resumed from a checkpoint sees exactly the
batches it would have seen, with no sampler state saved. Generators live on the CPU so the same
seed gives the same order on every device.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from worker.engine.errors import DataError, SpecError


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a purpose tag and numbers; distinct purposes never share a stream."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def holdout(size: int, validation_size: int, seed: int, source: str) -> tuple[Tensor, Tensor]:
    """Sorted (train, validation) indices: ``validation_size`` examples chosen by ``seed``."""
    if validation_size >= size:
        raise DataError(
            f"{source}: validation_size {validation_size} must be smaller than the training "
            f"split, which has {size} examples"
        )
    order = torch.randperm(size, generator=generator("holdout", seed))
    validation, train = order[:validation_size], order[validation_size:]
    return train.sort().values, validation.sort().values


def epoch_permutation(size: int, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits the ``size`` training examples."""
    return torch.randperm(size, generator=generator("epoch", seed, epoch))


def iterations_per_epoch(train_size: int, batch_size: int) -> int:
    """Full batches per epoch; the last partial batch is dropped so every batch is the same size."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if train_size < batch_size:
        raise SpecError(
            f"batch_size {batch_size} is larger than the training split ({train_size} examples "
            "after the validation hold-out); lower batch_size or validation_size"
        )
    return train_size // batch_size


def locate(step: int, per_epoch: int) -> tuple[int, int]:
    """(epoch, index within the epoch) of a training step."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return divmod(step, per_epoch)
