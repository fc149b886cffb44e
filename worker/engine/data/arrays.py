"""In-memory datasets as four arrays: reading them from npz/safetensors and checking them.

Every source that fits in memory (IDX, npz, safetensors, torchvision, synthetic) ends up as a
:class:`RawArrays`; :func:`check` is the one place that validates and lays them out, so every
source gets the same errors and the same layout.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from worker.engine.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
_FINITE_CHUNK = 1 << 24  # elements checked at a time, so the check needs little extra memory

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class RawArrays:
    """The four arrays as read; ``source`` names them (a file, usually) in error messages."""

    source: str
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array

    def digest(self) -> str:
        """sha256 of the arrays' dtypes, shapes and bytes: the data's identity for caching."""
        digest = hashlib.sha256()
        for key in KEYS:
            array = np.ascontiguousarray(getattr(self, key))
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.reshape(-1).view(np.uint8).data)
        return digest.hexdigest()


@dataclass(frozen=True)
class Examples:
    """Checked arrays as tensors: features (N, F) or NCHW in uint8 or float, labels int64."""

    source: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def check(raw: RawArrays) -> Examples:
    """Validate ``raw`` and lay it out as (N, F) or NCHW; a DataError names the source and flaw."""
    x_train = _features(raw.x_train, raw.source, "x_train")
    x_test = _features(raw.x_test, raw.source, "x_test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{raw.source}: test examples have shape {tuple(x_test.shape[1:])} but training "
            f"examples have shape {tuple(x_train.shape[1:])}"
        )
    y_train = _labels(raw.y_train, len(x_train), raw.source, "y_train")
    y_test = _labels(raw.y_test, len(x_test), raw.source, "y_test")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise DataError(f"{raw.source}: every label is 0; a classifier needs at least 2 classes")
    return Examples(
        raw.source,
        _tensor(x_train),
        _tensor(y_train.astype(np.int64, copy=False)),
        _tensor(x_test),
        _tensor(y_test.astype(np.int64, copy=False)),
        num_classes,
    )


def _features(x: Array, source: str, key: str) -> Array:
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{source}: {key} has dtype {x.dtype}; features must be uint8 or float")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: {key} has shape {x.shape}; expected (N, features), (N, H, W), "
            "(N, C, H, W) or (N, H, W, C)"
        )
    if len(x) == 0 or x.size == 0:
        raise DataError(f"{source}: {key} is empty (shape {x.shape})")
    if x.dtype != np.uint8:
        flat = x.reshape(-1)
        for start in range(0, flat.size, _FINITE_CHUNK):
            if not np.isfinite(flat[start : start + _FINITE_CHUNK]).all():
                raise DataError(f"{source}: {key} contains NaN or infinite values")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return x


def _labels(y: Array, count: int, source: str, key: str) -> Array:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: {key} has dtype {y.dtype}; labels must be integers")
    if y.ndim != 1:
        raise DataError(f"{source}: {key} has shape {y.shape}; labels must be one-dimensional")
    if len(y) != count:
        x_key = key.replace("y_", "x_")
        raise DataError(f"{source}: {key} has {len(y)} labels but {x_key} has {count} examples")
    if y.min() < 0:
        raise DataError(f"{source}: {key} has negative label {int(y.min())}; labels start at 0")
    return y


def _tensor(array: Array) -> Tensor:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def read_npz(path: Path) -> RawArrays:
    """The four arrays of an ``.npz`` archive, never unpickling (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: is a single .npy array, not an .npz archive of {KEYS}")
            _require_keys(path, list(archive.files))
            return RawArrays(str(path), *(archive[key] for key in KEYS))
    except DataError:
        raise
    except ValueError as error:  # object arrays or a non-numpy file: numpy refuses to unpickle
        raise DataError(f"{path}: not a plain numeric .npz archive ({error})") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: corrupt or unreadable .npz archive ({error})") from error


def read_safetensors(path: Path) -> RawArrays:
    """The four arrays of a safetensors file."""
    try:
        with safe_open(str(path), framework="numpy") as tensors:
            _require_keys(path, list(tensors.keys()))
            return RawArrays(str(path), *(tensors.get_tensor(key) for key in KEYS))
    except DataError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: corrupt or unreadable safetensors file ({error})") from error


def _require_keys(path: Path, found: list[str]) -> None:
    missing = [key for key in KEYS if key not in found]
    if missing:
        raise DataError(
            f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(found) or 'none'} "
            f"(a dataset file needs {', '.join(KEYS)})"
        )
