"""Datasets held in memory, normally as ready-to-use float32 tensors on the training device.

With the whole split on the device a batch is one ``index_select``: no loader processes, no
host-to-device copy per step. Data too large for that (over DEVICE_RESIDENT_BYTES as float32)
stays on the host in its stored dtype and is preprocessed batch by batch instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
_CHUNK = 4096  # examples preprocessed at a time, bounding the temporary memory


class TensorBatches:
    """Training batches of an in-memory split; ``batch(step)`` depends on (seed, step) only."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        prepare: Callable[[Tensor], Tensor],
        batch_size: int,
        seed: int,
        augment: Augmenter | None,
        device: torch.device,
    ) -> None:
        self.iterations_per_epoch = iterations_per_epoch(len(x), batch_size)
        self._x, self._y, self._prepare, self._device = x, y, prepare, device
        self._batch_size, self._seed, self._augment = batch_size, seed, augment
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, index = locate(step, self.iterations_per_epoch)
        if epoch != self._epoch:
            order = epoch_permutation(len(self._x), self._seed, epoch)
            self._order, self._epoch = order.to(self._x.device), epoch
        indices = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        x = self._prepare(self._x.index_select(0, indices))
        y = self._y.index_select(0, indices.to(self._y.device)).to(self._device)
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
        self._augment_fill = preprocess.black(self.input_shape[0]) if images else None

        splits = [(x_train, y_train), (x_val, y_val), (examples.x_test, examples.y_test)]
        elements = sum(x.numel() for x, _ in splits)
        self.resident = elements * 4 <= DEVICE_RESIDENT_BYTES
        self._prepare: Callable[[Tensor], Tensor] = preprocess
        if self.resident:
            splits = [(_preprocessed(x, preprocess), y.to(device)) for x, y in splits]
            self._prepare = _identity
        self._splits = {"train": splits[0], "validation": splits[1], "test": splits[2]}

        self.num_classes = examples.num_classes
        self.train_size = len(x_train)
        self.validation_size = len(x_val)
        self.test_size = len(examples.x_test)
        self.device = device
        self.fingerprint = fingerprint(data_digest, spec, seed)
        self._augment = spec.augment

    def train_batches(self, batch_size: int, seed: int) -> TensorBatches:
        augment = Augmenter(seed, self._augment_fill) if self._augment else None
        x, y = self._splits["train"]
        return TensorBatches(x, y, self._to_device, batch_size, seed, augment, self.device)

    def eval_batches(self, split: Split, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, in chunks, without augmentation (empty if nothing was held out)."""
        x, y = self._splits[split]
        for start in range(0, len(x), batch_size):
            end = start + batch_size
            yield self._to_device(x[start:end]), y[start:end].to(self.device)

    def _to_device(self, x: Tensor) -> Tensor:
        return self._prepare(x).to(self.device)


def _identity(x: Tensor) -> Tensor:
    return x


def _preprocessed(x: Tensor, preprocess: Preprocess) -> Tensor:
    """``preprocess(x)`` built chunk by chunk, so peak memory is the result plus one chunk."""
    out = torch.empty(x.shape, dtype=torch.float32, device=preprocess.device)
    for start in range(0, len(x), _CHUNK):
        out[start : start + _CHUNK] = preprocess(x[start : start + _CHUNK])
    return out
