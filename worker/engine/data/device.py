"""Datasets held in memory in their stored dtype, normally on the training device.

With the whole split on the device a batch is one ``index_select`` plus a few elementwise ops:
no loader processes, no host-to-device copy per step. The split stays as stored (uint8 images
take a quarter of the memory of float32) and is scaled and normalised batch by batch. Data too
large for the device (over DEVICE_RESIDENT_BYTES as stored) stays on the host and is copied
over batch by batch instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from api_schemas.spec import DatasetSpec
from worker.engine.data.api import Split
from worker.engine.data.arrays import Examples
from worker.engine.data.augment import Augmenter, require_images
from worker.engine.data.fingerprint import fingerprint
from worker.engine.data.normalize import Preprocess, fit, to_unit
from worker.engine.data.order import epoch_permutation, holdout, iterations_per_epoch, locate

DEVICE_RESIDENT_BYTES = 4 * 2**30
_CHUNK = 4096  # examples scaled at a time while fitting the statistics, bounding the memory

Part = Literal["train", "validation", "test"]


class TensorBatches:
    """Training batches of an in-memory split; ``batch(step)`` depends on (seed, step) only."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        preprocess: Preprocess,
        batch_size: int,
        seed: int,
        augment: Augmenter | None,
    ) -> None:
        self.iterations_per_epoch = iterations_per_epoch(len(x), batch_size)
        self._x, self._y, self._preprocess = x, y, preprocess
        self._batch_size, self._seed, self._augment = batch_size, seed, augment
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, index = locate(step, self.iterations_per_epoch)
        if epoch != self._epoch:
            order = epoch_permutation(len(self._x), self._seed, epoch)
            self._order, self._epoch = order.to(self._x.device), epoch
        indices = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        x = self._preprocess.fresh(self._x.index_select(0, indices))
        y = self._y.index_select(0, indices.to(self._y.device)).to(self._preprocess.device)
        if self._augment is not None:
            x = self._augment(x, step)
        return x, y


class TensorDataset:
    """An in-memory dataset split into train / validation / test (see the module docstring)."""

    def __init__(
        self,
        examples: Examples,
        spec: DatasetSpec,
        seed: int,
        device: torch.device,
        data_digest: str,
    ) -> None:
        source = examples.source
        self.input_shape = examples.input_shape
        if spec.augment:
            require_images(self.input_shape, source)
        x_train, y_train = examples.x_train, examples.y_train
        x_val, y_val = x_train[:0], y_train[:0]
        if spec.validation_size:
            train, val = holdout(len(x_train), spec.validation_size, seed, source)
            x_val, y_val = x_train.index_select(0, val), y_train.index_select(0, val)
            x_train, y_train = x_train.index_select(0, train), y_train.index_select(0, train)

        images = len(self.input_shape) == 3
        preprocess = Preprocess(device)
        if spec.normalize:
            chunks = (to_unit(x_train[i : i + _CHUNK]) for i in range(0, len(x_train), _CHUNK))
            preprocess = fit(chunks, device, images)
        self._preprocess = preprocess
        self._augment_fill = preprocess.black(self.input_shape[0]) if images else None

        splits = [(x_train, y_train), (x_val, y_val), (examples.x_test, examples.y_test)]
        self.resident = sum(_nbytes(x) + _nbytes(y) for x, y in splits) <= DEVICE_RESIDENT_BYTES
        if self.resident:
            splits = [(x.to(device), y.to(device)) for x, y in splits]
        self._splits = {"train": splits[0], "validation": splits[1], "test": splits[2]}

        self.num_classes = examples.num_classes
        self.train_size = len(x_train)
        self.validation_size = len(x_val)
        self.test_size = len(examples.x_test)
        self.device = device
        self.fingerprint = fingerprint(data_digest, spec, seed)
        self._augment = spec.augment

    def stored(self, split: Part) -> tuple[Tensor, Tensor]:
        """The examples and labels of ``split`` ("train" too) as held: stored dtype, unscaled."""
        return self._splits[split]

    def train_batches(self, batch_size: int, seed: int) -> TensorBatches:
        augment = Augmenter(seed, self._augment_fill) if self._augment else None
        x, y = self._splits["train"]
        return TensorBatches(x, y, self._preprocess, batch_size, seed, augment)

    def eval_batches(self, split: Split, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, in chunks, without augmentation (empty if nothing was held out)."""
        x, y = self._splits[split]
        for start in range(0, len(x), batch_size):
            end = start + batch_size
            yield self._preprocess(x[start:end]), y[start:end].to(self.device)


def _nbytes(x: Tensor) -> int:
    return x.numel() * x.element_size()
