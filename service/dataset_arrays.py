"""What a dataset file's readers share: the arrays' declared layout and the errors they raise.

A reader (npz or safetensors) only parses headers and then hands out the array bytes in chunks of
at most :data:`CHUNK_BYTES`, so validating a file of any size needs a few MiB of memory.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
#: Array bytes handed out at a time: a multiple of every numpy item size (1 to 16 bytes).
CHUNK_BYTES = 1024 * 1024


class InvalidDatasetError(ValueError):
    """The file is not a usable dataset; the message says why, for the caller."""

    kind = "invalid_dataset"


class DatasetTooLargeError(InvalidDatasetError):
    """The file declares or holds more data than the service accepts."""

    kind = "dataset_too_large"


@dataclass(frozen=True)
class ArrayHeader:
    """One array as its file declares it, before any of its data is read."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    #: Bytes of array data the file holds for it (for npz: the member's uncompressed size).
    stored_bytes: int

    @property
    def nbytes(self) -> int:
        """Bytes the declared shape and dtype need (exact: Python integers do not overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


class ArraySource(Protocol):
    """An open dataset file: the four arrays' headers, then their bytes chunk by chunk."""

    headers: dict[str, ArrayHeader]

    def chunks(self, key: str) -> Generator[bytes, None, None]:
        """``key``'s data in chunks of whole items; raises if the file does not hold it all."""
        ...


def missing_arrays(found: list[str]) -> InvalidDatasetError:
    """The error for a file without the four arrays."""
    missing = [k for k in REQUIRED if k not in found]
    return InvalidDatasetError(
        f"missing arrays {', '.join(missing)}; a dataset needs {', '.join(REQUIRED)} "
        f"(found: {', '.join(sorted(found)) or 'none'})"
    )
