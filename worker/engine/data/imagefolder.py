"""Image folders (``train/<class>/*.png``, ``test/<class>/*.png``) streamed from disk.

Unlike the in-memory sources these are never held whole: a DataLoader decodes batches in worker
processes. Batches are still a pure function of (seed, step): the loader's sampler walks the
epoch's permutation from the requested step, and is rebuilt whenever a step is asked for out of
sequence (after a resume, say).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, Subset
from torch.utils.data import Dataset as TorchDataset

from api_schemas.spec import DatasetSpec
from worker.engine.data.api import Split
from worker.engine.data.augment import Augmenter
from worker.engine.data.fingerprint import fingerprint
from worker.engine.data.normalize import Preprocess, fit
from worker.engine.data.order import epoch_permutation, holdout, iterations_per_epoch, locate
from worker.engine.data.uris import resolve_path
from worker.engine.errors import DataError

Batch = tuple[Tensor, Tensor]


def _workers() -> int:
    """Decoding processes: all cores but one for the training loop, at most 8."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class _Images(TorchDataset[tuple[Tensor, int]]):
    """An ImageFolder decoded with ToTensor, whose flaws are DataErrors naming the file."""

    def __init__(self, directory: Path) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import ToTensor

        try:
            self.folder: Any = ImageFolder(str(directory), transform=ToTensor())
        except (FileNotFoundError, OSError) as error:
            raise DataError(f"{directory}: not a usable image folder ({error})") from error
        self.classes: list[str] = list(self.folder.classes)
        self.samples: list[tuple[str, int]] = list(self.folder.samples)
        self.shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.samples[index][0]
        try:
            image, label = self.folder[index]
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DataError(f"{path}: unreadable image ({error})") from error
        if tuple(image.shape) != self.shape:
            raise DataError(
                f"{path}: image has shape {tuple(image.shape)} (C, H, W) but the dataset's images "
                f"have {self.shape}; all images must be the same size"
            )
        return image, int(label)


class _Order(Sampler[int]):
    """Yields a fixed list of indices: the rest of one epoch's permutation."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class FolderBatches:
    """Training batches streamed from disk; ``batch(step)`` depends on (seed, step) only."""

    def __init__(
        self,
        images: _Images,
        train: Tensor,
        preprocess: Preprocess,
        batch_size: int,
        seed: int,
        augment: Augmenter | None,
    ) -> None:
        self.iterations_per_epoch = iterations_per_epoch(len(train), batch_size)
        self._images, self._train, self._preprocess = images, train, preprocess
        self._batch_size, self._seed, self._augment = batch_size, seed, augment
        self._iterator: Iterator[Batch] | None = None
        self._next_step = -1

    def batch(self, step: int) -> Batch:
        epoch, index = locate(step, self.iterations_per_epoch)
        if self._iterator is None or step != self._next_step:
            self._iterator = self._start(epoch, index)
        with _worker_errors():
            x, y = next(self._iterator)
        self._next_step = step + 1
        if index + 1 == self.iterations_per_epoch:
            self._iterator = None  # the epoch is over; the next one has a new order
        x = self._preprocess(x)
        if self._augment is not None:
            x = self._augment(x, step)
        return x, y.to(self._preprocess.device)

    def _start(self, epoch: int, index: int) -> Iterator[Batch]:
        order = self._train[epoch_permutation(len(self._train), self._seed, epoch)]
        rest = order[index * self._batch_size : self.iterations_per_epoch * self._batch_size]
        return iter(_loader(self._images, self._batch_size, _Order(rest.tolist())))


class ImageFolderDataset:
    """A dataset of same-sized images in ``train/`` and ``test/`` class folders."""

    def __init__(
        self,
        directory: Path,
        roots: Sequence[Path],
        spec: DatasetSpec,
        seed: int,
        device: torch.device,
    ) -> None:
        self._train_images = _Images(directory / "train")
        self._test_images = _Images(directory / "test")
        classes = self._train_images.classes
        if self._test_images.classes != classes:
            raise DataError(
                f"{directory}: test classes {self._test_images.classes} differ from train classes "
                f"{classes}; both folders need the same class subfolders"
            )
        data_digest = _digest(directory, roots, self._train_images, self._test_images)
        shape = _common_shape(directory, self._train_images, self._test_images)
        self._train_images.shape = self._test_images.shape = shape

        self._train, self._validation = torch.arange(len(self._train_images)), torch.arange(0)
        if spec.validation_size:
            size, held_out = len(self._train_images), spec.validation_size
            self._train, self._validation = holdout(size, held_out, seed, str(directory))

        self._preprocess = Preprocess(device)
        if spec.normalize:
            batches = _loader(self._train_images, 256, _Order(self._train.tolist()))
            self._preprocess = fit((x for x, _ in batches), device, images=True)

        self.input_shape = shape
        self.num_classes = len(classes)
        self.train_size = len(self._train)
        self.validation_size = len(self._validation)
        self.test_size = len(self._test_images)
        self.device = device
        self.fingerprint = fingerprint(data_digest, spec, seed)
        self._augment = spec.augment

    def train_batches(self, batch_size: int, seed: int) -> FolderBatches:
        fill = self._preprocess.black(self.input_shape[0])
        augment = Augmenter(seed, fill) if self._augment else None
        return FolderBatches(
            self._train_images, self._train, self._preprocess, batch_size, seed, augment
        )

    def eval_batches(self, split: Split, batch_size: int = 1000) -> Iterator[Batch]:
        """The split in order, in chunks, without augmentation (empty if nothing was held out)."""
        images, indices = {
            "validation": (self._train_images, self._validation.tolist()),
            "test": (self._test_images, list(range(len(self._test_images)))),
        }[split]
        if not indices:
            return
        batches = iter(_loader(Subset(images, indices), batch_size, None))
        while True:
            with _worker_errors():
                batch = next(batches, None)
            if batch is None:
                return
            yield self._preprocess(batch[0]), batch[1].to(self.device)


@contextmanager
def _worker_errors() -> Iterator[None]:
    """A DataError from a loader process, without the traceback torch wraps around it."""
    try:
        yield
    except DataError as error:
        message = str(error)
        if "Original Traceback" in message:  # re-raised by the DataLoader from a worker
            message = message.rsplit("DataError: ", 1)[-1].strip()
        raise DataError(message) from None


def _loader(
    images: TorchDataset[tuple[Tensor, int]], batch_size: int, sampler: Sampler[int] | None
) -> DataLoader[tuple[Tensor, int]]:
    # Loader processes are forked. A fork taken while another thread of this process is inside an
    # import copies a half-held import lock, and the child's first import (PIL loads its decoders
    # lazily, on the first Image.open) then fails. Importing every decoder here, before the fork,
    # leaves the children nothing to import.
    Image.init()
    return DataLoader(
        images,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=False,  # a training sampler holds whole batches only
        num_workers=_workers(),
    )


def _common_shape(directory: Path, *folders: _Images) -> tuple[int, ...]:
    """The (C, H, W) of the first image of each class, which must all agree."""
    first: tuple[str, tuple[int, int]] | None = None
    for images in folders:
        seen: set[int] = set()
        for path, label in images.samples:
            if label in seen:
                continue
            seen.add(label)
            try:
                with Image.open(path) as image:
                    size = image.size
            except (OSError, UnidentifiedImageError) as error:
                raise DataError(f"{path}: unreadable image ({error})") from error
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise DataError(
                    f"{path}: image is {size[0]}x{size[1]} but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]}; all images must be the same size"
                )
    if first is None:
        raise DataError(f"{directory}: no images found")
    return (3, first[1][1], first[1][0])  # ImageFolder decodes every image as RGB


def _digest(directory: Path, roots: Sequence[Path], *folders: _Images) -> str:
    """sha256 of every file's relative path and bytes; also confines each file to the roots."""
    digest = hashlib.sha256()
    for images in folders:
        for path, label in images.samples:
            resolved = resolve_path(path, roots)  # a symlinked image must not lead outside
            digest.update(f"{Path(path).relative_to(directory)}:{label};".encode())
            with resolved.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()
