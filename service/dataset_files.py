"""Validate an uploaded dataset without executing anything in it, in bounded memory.

npz archives are read without numpy's unpickler and safetensors cannot hold code. Headers come
first: declared sizes over the caps, dtypes and layouts the worker cannot train on are refused
before any data is read. Then every array is read in chunks (:mod:`service.dataset_arrays`) to
check its values, so a small file that decompresses to gigabytes never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.dataset_arrays import (
    REQUIRED,
    ArrayHeader,
    ArraySource,
    DatasetTooLargeError,
    InvalidDatasetError,
)
from service.dataset_values import check_dtype, check_features, is_labels, largest_label
from service.npz_arrays import NpzArrays
from service.safetensors_arrays import SafetensorsArrays

__all__ = [
    "DatasetInfo",
    "DatasetLimits",
    "DatasetTooLargeError",
    "InvalidDatasetError",
    "inspect_dataset",
    "read_headers",
]


@dataclass(frozen=True)
class DatasetLimits:
    """Caps on what an upload may hold (``LTH_MAX_DATASET_BYTES``, ``LTH_MAX_CLASSES``)."""

    max_bytes: int
    max_classes: int


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


@contextmanager
def _open(path: Path, format: str) -> Iterator[ArraySource]:
    source: NpzArrays | SafetensorsArrays
    if format == "npz":
        source = NpzArrays(path)
    elif format == "safetensors":
        source = SafetensorsArrays(path)
    else:
        raise InvalidDatasetError(f"unsupported format {format!r}")
    try:
        yield source
    finally:
        source.close()


def read_headers(path: Path, format: str) -> dict[str, ArrayHeader]:
    """The four arrays' declared shapes and dtypes, reading no array data."""
    with _open(path, format) as source:
        return source.headers


def _check_sizes(headers: dict[str, ArrayHeader], limit: int) -> None:
    for header in headers.values():
        if header.stored_bytes > limit:
            raise DatasetTooLargeError(
                f"{header.key} holds {header.stored_bytes:,} bytes uncompressed; this service "
                f"accepts at most {limit:,} bytes of arrays per dataset"
            )
    declared = sum(header.nbytes for header in headers.values())
    if declared > limit:
        shapes = ", ".join(f"{h.key} {h.shape} {h.dtype}" for h in headers.values())
        raise DatasetTooLargeError(
            f"the arrays declare {declared:,} bytes ({shapes}); this service accepts at most "
            f"{limit:,} bytes of arrays per dataset"
        )


def _check_layout(shapes: dict[str, tuple[int, ...]]) -> None:
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
        if y[0] == 0:
            raise InvalidDatasetError(f"y_{split} is empty: both splits need examples")
        if not 2 <= len(x) <= 4:
            raise InvalidDatasetError(
                f"x_{split} has shape {x}; expected (N, features), (N, H, W), (N, C, H, W) or "
                "(N, H, W, C)"
            )
        if 0 in x:
            raise InvalidDatasetError(f"x_{split} has shape {x}: its examples hold no values")
    if shapes["x_train"][1:] != shapes["x_test"][1:]:
        raise InvalidDatasetError(
            f"x_train examples have shape {shapes['x_train'][1:]} but x_test examples "
            f"{shapes['x_test'][1:]}; they must match"
        )


def _check_headers(headers: dict[str, ArrayHeader], limits: DatasetLimits) -> None:
    """Everything that can be refused before reading data, the cheapest refusals first."""
    for header in headers.values():
        if header.dtype.hasobject:
            check_dtype(header)  # the pickle refusal, whatever else is wrong
    _check_sizes(headers, limits.max_bytes)
    for header in headers.values():
        check_dtype(header)
    _check_layout({key: header.shape for key, header in headers.items()})
    for header in headers.values():
        if header.stored_bytes != header.nbytes:
            raise InvalidDatasetError(
                f"{header.key} declares shape {header.shape} of {header.dtype} "
                f"({header.nbytes:,} bytes) but the file holds {header.stored_bytes:,} bytes "
                "for it"
            )


def inspect_dataset(path: Path, format: str, limits: DatasetLimits) -> DatasetInfo:
    """Validate an ``npz`` or ``safetensors`` file; :class:`InvalidDatasetError` says what is
    wrong (:class:`DatasetTooLargeError` when it is over a cap)."""
    with _open(path, format) as source:
        headers = source.headers
        _check_headers(headers, limits)
        top = -1
        for key in ("y_train", "y_test", "x_train", "x_test"):  # labels first: they are small
            with closing(source.chunks(key)) as chunks:
                if is_labels(key):
                    top = max(top, largest_label(headers[key], chunks, limits.max_classes))
                else:
                    check_features(headers[key], chunks)
    shapes = {key: headers[key].shape for key in REQUIRED}
    return DatasetInfo(
        train_size=shapes["x_train"][0],
        test_size=shapes["x_test"][0],
        input_shape=list(shapes["x_train"][1:]),
        num_classes=top + 1,
        arrays={
            key: {"shape": list(shapes[key]), "dtype": str(headers[key].dtype)} for key in REQUIRED
        },
    )
