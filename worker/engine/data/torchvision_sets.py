"""torchvision's standard datasets, read as whole arrays (no per-example PIL transforms).

Files are read from the worker's torchvision root and downloaded only when the operator allows
it. CIFAR's batches are pickles, which torchvision opens only after checking their published
md5 sums, so nothing but the official files is ever unpickled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worker.engine.data.arrays import Array, RawArrays
from worker.engine.errors import DataError

Split = tuple[Array, Array]


def _mnist_like(name: str) -> Callable[[Path, bool, bool], Split]:
    def read(root: Path, train: bool, download: bool) -> Split:
        import torchvision.datasets as tvd

        dataset = getattr(tvd, name)(str(root), train=train, download=download)
        return dataset.data.numpy(), dataset.targets.numpy()

    return read


def _cifar(name: str) -> Callable[[Path, bool, bool], Split]:
    def read(root: Path, train: bool, download: bool) -> Split:
        import torchvision.datasets as tvd

        dataset = getattr(tvd, name)(str(root), train=train, download=download)
        return np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64)  # NHWC

    return read


def _svhn(root: Path, train: bool, download: bool) -> Split:
    if importlib.util.find_spec("scipy") is None:  # torchvision reads SVHN's .mat files with it
        raise DataError("torchvision://SVHN needs scipy on the worker (pip install scipy)")
    import torchvision.datasets as tvd

    dataset = tvd.SVHN(str(root), split="train" if train else "test", download=download)
    return np.asarray(dataset.data), np.asarray(dataset.labels, dtype=np.int64)  # NCHW


#: Dataset name -> (reader, where torchvision keeps it under the root).
READERS: dict[str, tuple[Callable[[Path, bool, bool], Split], str]] = {
    "MNIST": (_mnist_like("MNIST"), "MNIST/raw/"),
    "FashionMNIST": (_mnist_like("FashionMNIST"), "FashionMNIST/raw/"),
    "KMNIST": (_mnist_like("KMNIST"), "KMNIST/raw/"),
    "CIFAR10": (_cifar("CIFAR10"), "cifar-10-batches-py/"),
    "CIFAR100": (_cifar("CIFAR100"), "cifar-100-python/"),
    "SVHN": (_svhn, "train_32x32.mat"),
}


def read(name: str, root: Path, download: bool) -> RawArrays:
    """Train and test arrays of torchvision dataset ``name`` under ``root``."""
    if name not in READERS:
        raise DataError(f"unknown torchvision dataset {name!r}; use one of {', '.join(READERS)}")
    reader, layout = READERS[name]
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        x_train, y_train = reader(root, True, download)
        x_test, y_test = reader(root, False, download)
    except DataError:
        raise
    except (RuntimeError, OSError, ValueError) as error:
        if download:
            message = f"torchvision://{name}: download into {root} failed ({error})"
            raise DataError(message) from error
        if not isinstance(error, RuntimeError):  # not torchvision's "Dataset not found"
            message = f"torchvision://{name} under {root} is unreadable ({error})"
            raise DataError(message) from error
        raise DataError(
            f"torchvision://{name} is not in {root} (looked for {root / layout}) and this worker "
            "may not download datasets; put the files there in torchvision's layout or enable "
            "downloads in the worker's data config (download=True)"
        ) from error
    return RawArrays(f"torchvision://{name} ({root})", x_train, y_train, x_test, y_test)


def name_of(netloc: str, path: str) -> str:
    """``torchvision://CIFAR10`` and ``torchvision:///CIFAR10`` both name CIFAR10."""
    return netloc or path.strip("/")
