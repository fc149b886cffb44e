"""Dtypes and values of a dataset's arrays, checked chunk by chunk as a reader hands them out.

What the worker trains on: features are uint8 or finite floating-point numbers, labels integer
class indices in ``[0, max_classes)``. Checking here refuses a bad file before it is stored
rather than in a job much later.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from service.dataset_arrays import ArrayHeader, InvalidDatasetError


def is_labels(key: str) -> bool:
    return key.startswith("y_")


def check_dtype(header: ArrayHeader) -> None:
    """Refuse dtypes the worker cannot train on, by the header alone."""
    key, dtype = header.key, header.dtype
    if dtype.hasobject:
        raise InvalidDatasetError(
            f"{key} holds Python objects (stored as a pickle); only numeric arrays are accepted"
        )
    if is_labels(key):
        if dtype.kind not in "iu":
            raise InvalidDatasetError(f"{key} must hold integer class indices, not {dtype}")
    elif not (dtype == np.uint8 or dtype.kind == "f"):
        raise InvalidDatasetError(
            f"{key} has dtype {dtype}; features must be uint8 or floating-point numbers"
        )


def check_features(header: ArrayHeader, chunks: Iterable[bytes]) -> None:
    """Every chunk must be read (for npz that verifies the CRC); floats must be finite."""
    finite = header.dtype.kind == "f"
    for chunk in chunks:
        if finite and not np.isfinite(np.frombuffer(chunk, header.dtype)).all():
            raise InvalidDatasetError(f"{header.key} contains NaN or infinite values")


def largest_label(header: ArrayHeader, chunks: Iterable[bytes], max_classes: int) -> int:
    """The largest label, after checking each lies in ``[0, max_classes)``."""
    top = -1
    for chunk in chunks:
        labels = np.frombuffer(chunk, header.dtype)
        if labels.size == 0:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise InvalidDatasetError(
                f"{header.key} holds negative labels ({low}); classes are numbered from 0"
            )
        if high >= max_classes:
            raise InvalidDatasetError(
                f"{header.key} holds label {high}; this service accepts at most {max_classes:,} "
                f"classes (labels 0 to {max_classes - 1:,})"
            )
        top = max(top, high)
    return top
