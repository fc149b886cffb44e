"""The dataset layer's contract with the training loop: a config, a dataset and its batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

Split = Literal["validation", "test"]


@dataclass(frozen=True)
class DataConfig:
    """What the worker's operator allows; the user's spec only chooses within it.

    ``roots`` confine every file-based URI (after resolving symlinks and ``..``), so a spec can
    never make the worker read files it was not meant to. ``uploads`` maps ``dataset://<id>`` to
    the uploaded file; only the service knows where uploads live. ``excluded`` are areas inside
    the roots a spec may not name by path (the upload area, whose files belong to tenants).
    ``models`` maps the ``model://<id>`` locations of the spec to their files.
    """

    roots: tuple[Path, ...]
    download: bool = False
    torchvision_root: Path | None = None
    uploads: Callable[[str], Path] | None = None
    excluded: tuple[Path, ...] = ()
    #: Local files of ``model://<id>`` locations in the spec (uploads the service fetched).
    models: Mapping[str, Path] = field(default_factory=dict)


class BatchSource(Protocol):
    """Training batches as a pure function of the step, so a resumed run needs no saved state."""

    iterations_per_epoch: int

    def batch(self, step: int) -> tuple[Tensor, Tensor]: ...


class Dataset(Protocol):
    """A dataset split into train, validation (held out of train) and test, ready on a device."""

    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    validation_size: int
    test_size: int
    device: torch.device
    fingerprint: str

    def train_batches(self, batch_size: int, seed: int) -> BatchSource: ...

    def eval_batches(
        self, split: Split, batch_size: int = 1000
    ) -> Iterator[tuple[Tensor, Tensor]]: ...
