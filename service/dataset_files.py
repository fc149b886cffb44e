"""Validate an uploaded dataset without executing anything in it.

npz: ``numpy.load(allow_pickle=False)``, and array headers are read before any data, so an
object (pickled) array is refused without being touched. safetensors cannot hold code. Only
the label arrays are loaded (to count classes); inputs are checked by their headers.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


class InvalidDatasetError(ValueError):
    """The file is not a usable dataset; the message says why, for the caller."""


@dataclass(frozen=True)
class DatasetInfo:
    """What validation learned about a dataset file."""

    train_size: int
    test_size: int
    input_shape: list[int]
    num_classes: int | None
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        """JSON-ready form stored with the dataset row."""
        return {
            "train_size": self.train_size,
            "test_size": self.test_size,
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "arrays": self.arrays,
        }


#: Labels are decompressed in the API process to validate them: refuse absurd declared sizes
#: before reading (a small compressed archive can declare gigabytes).
MAX_LABEL_BYTES = 256 * 1024 * 1024


def _num_classes(labels: np.ndarray[Any, Any], key: str) -> int:
    """Labels must be what the engine trains on: integer class indices from 0."""
    if labels.size == 0:
        raise InvalidDatasetError(f"{key} is empty: both splits need examples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidDatasetError(f"{key} must hold integer class indices, not {labels.dtype}")
    if labels.min() < 0:
        raise InvalidDatasetError(f"{key} holds negative labels; classes are numbered from 0")
    return int(labels.max()) + 1


def _check_label_size(key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size > MAX_LABEL_BYTES:
        raise InvalidDatasetError(f"{key} declares {size:,} bytes of labels; that is not plausible")


def _summarise(
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str],
    y_train: np.ndarray[Any, Any],
    y_test: np.ndarray[Any, Any],
) -> DatasetInfo:
    for split in ("train", "test"):
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if len(x) < 1 or len(y) < 1:
            raise InvalidDatasetError(f"x_{split} and y_{split} must be arrays, not scalars")
        if x[0] != y[0]:
            raise InvalidDatasetError(
                f"x_{split} has {x[0]} examples but y_{split} has {y[0]} labels; they must match"
            )
        if len(y) != 1:
            raise InvalidDatasetError(f"y_{split} must be one label per example (1-D), got {y}")
    if shapes["x_train"][1:] != shapes["x_test"][1:]:
        raise InvalidDatasetError(
            f"x_train examples have shape {shapes['x_train'][1:]} but x_test examples "
            f"{shapes['x_test'][1:]}; they must match"
        )
    classes = max(_num_classes(y_train, "y_train"), _num_classes(y_test, "y_test"))
    return DatasetInfo(
        train_size=shapes["x_train"][0],
        test_size=shapes["x_test"][0],
        input_shape=list(shapes["x_train"][1:]),
        num_classes=classes,
        arrays={k: {"shape": list(shapes[k]), "dtype": dtypes[k]} for k in REQUIRED},
    )


def _missing(found: list[str]) -> InvalidDatasetError:
    missing = [k for k in REQUIRED if k not in found]
    return InvalidDatasetError(
        f"missing arrays {', '.join(missing)}; a dataset needs {', '.join(REQUIRED)} "
        f"(found: {', '.join(sorted(found)) or 'none'})"
    )


def _npy_header(npz: Any, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with npz.zip.open(f"{key}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise InvalidDatasetError(f"{key}: unsupported .npy format version {version}")
    return tuple(int(n) for n in shape), dtype


def inspect_npz(path: Path) -> DatasetInfo:
    """Validate an .npz archive; :class:`InvalidDatasetError` says what is wrong."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidDatasetError(f"not a readable .npz archive without pickles: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InvalidDatasetError("not an .npz archive (a single .npy array?)")
    with loaded as npz:
        if any(k not in npz.files for k in REQUIRED):
            raise _missing(list(npz.files))
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, str] = {}
        try:
            for key in REQUIRED:
                shape, dtype = _npy_header(npz, key)
                if dtype.hasobject:
                    raise InvalidDatasetError(
                        f"{key} holds Python objects (stored as a pickle); only numeric arrays "
                        "are accepted"
                    )
                shapes[key], dtypes[key] = shape, str(dtype)
                if key.startswith("y_"):
                    _check_label_size(key, shape, dtype)
            y_train, y_test = npz["y_train"], npz["y_test"]
        except InvalidDatasetError:
            raise
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise InvalidDatasetError(f"unreadable array in the archive: {exc}") from exc
    return _summarise(shapes, dtypes, y_train, y_test)


def inspect_safetensors(path: Path) -> DatasetInfo:
    """Validate a safetensors file; :class:`InvalidDatasetError` says what is wrong."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
            if any(k not in keys for k in REQUIRED):
                raise _missing(keys)
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for key in REQUIRED:
                tensor_slice = handle.get_slice(key)
                shapes[key] = tuple(int(n) for n in tensor_slice.get_shape())
                dtypes[key] = str(tensor_slice.get_dtype())
                if key.startswith("y_") and int(np.prod(shapes[key])) * 8 > MAX_LABEL_BYTES:
                    raise InvalidDatasetError(f"{key} declares an implausible number of labels")
            y_train, y_test = handle.get_tensor("y_train"), handle.get_tensor("y_test")
    except InvalidDatasetError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise InvalidDatasetError(f"not a readable safetensors file: {exc}") from exc
    return _summarise(shapes, dtypes, y_train, y_test)


def inspect_dataset(path: Path, format: str) -> DatasetInfo:
    """Dispatch on the format (``npz`` or ``safetensors``)."""
    if format == "npz":
        return inspect_npz(path)
    if format == "safetensors":
        return inspect_safetensors(path)
    raise InvalidDatasetError(f"unsupported format {format!r}")
