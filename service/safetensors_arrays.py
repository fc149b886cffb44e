"""Read an uploaded safetensors file in bounded memory.

The header is parsed here first, capped at :data:`MAX_HEADER_BYTES` (the library accepts 100 MB
of JSON), and each of the four arrays must name a dtype numpy reads and offsets inside the file.
The library the worker reads with must then accept the file too (it also refuses gaps and
overlaps between tensors). Array bytes are read with plain reads, chunk by chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from safetensors import SafetensorError, safe_open

from service.dataset_arrays import CHUNK_BYTES, REQUIRED, ArrayHeader, InvalidDatasetError
from service.dataset_arrays import missing_arrays as _missing

#: Largest header accepted; the four arrays' entries take a few hundred bytes.
MAX_HEADER_BYTES = 1024 * 1024
#: safetensors dtypes numpy (and so the worker) can read; the format is little-endian.
_DTYPES = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "U16": "<u2",
    "I16": "<i2",
    "F16": "<f2",
    "U32": "<u4",
    "I32": "<i4",
    "F32": "<f4",
    "U64": "<u8",
    "I64": "<i8",
    "F64": "<f8",
}
_PREFIX = "not a readable safetensors file"


def _ints(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )


def _entry(key: str, entry: Any, data_bytes: int) -> tuple[ArrayHeader, int]:
    """``key``'s header and where its data starts within the data section."""
    if not isinstance(entry, dict):
        raise InvalidDatasetError(f"{_PREFIX}: the header entry of {key} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InvalidDatasetError(
            f"{key} has dtype {dtype!r}, which numpy cannot read; use one of {', '.join(_DTYPES)}"
        )
    if not _ints(shape):
        raise InvalidDatasetError(f"{key}: shape {shape!r} is not a list of sizes")
    if not _ints(offsets) or len(offsets) != 2:
        raise InvalidDatasetError(f"{key}: data_offsets {offsets!r} is not a [begin, end] pair")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise InvalidDatasetError(
            f"{key}: data_offsets [{begin}, {end}] lie outside the file's {data_bytes:,} bytes "
            "of tensor data"
        )
    return ArrayHeader(key, tuple(shape), np.dtype(_DTYPES[dtype]), end - begin), begin


class SafetensorsArrays:
    """The four arrays of a safetensors file (an ArraySource)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("rb")
        self._starts: dict[str, int] = {}
        self._accepted = False
        try:
            self.headers = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def _read_header(self) -> dict[str, ArrayHeader]:
        size = os.fstat(self._file.fileno()).st_size
        prefix = self._file.read(8)
        if len(prefix) < 8:
            raise InvalidDatasetError(f"{_PREFIX}: shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES:
            raise InvalidDatasetError(
                f"{_PREFIX}: its header length is {length:,} bytes; at most "
                f"{MAX_HEADER_BYTES:,} are accepted"
            )
        if 8 + length > size:
            raise InvalidDatasetError(
                f"{_PREFIX}: its header length ({length:,} bytes) runs past the end of the file"
            )
        try:
            header = json.loads(self._file.read(length))
        except (ValueError, RecursionError) as exc:
            raise InvalidDatasetError(f"{_PREFIX}: the header is not JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise InvalidDatasetError(f"{_PREFIX}: the header is not a JSON object")
        found = [k for k in header if k != "__metadata__"]
        if any(k not in found for k in REQUIRED):
            raise _missing(found)
        headers: dict[str, ArrayHeader] = {}
        for key in REQUIRED:
            headers[key], begin = _entry(key, header[key], size - 8 - length)
            self._starts[key] = 8 + length + begin
        return headers

    def _check_library(self) -> None:
        """The worker's reader must accept the file; checked before the first data is handed
        out, so the header's own checks (and the caller's) give their clearer errors first."""
        if self._accepted:
            return
        try:
            with safe_open(str(self._path), framework="numpy"):
                pass
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise InvalidDatasetError(f"{_PREFIX}: {exc}") from exc
        self._accepted = True

    def chunks(self, key: str) -> Generator[bytes, None, None]:
        self._check_library()
        left = self.headers[key].stored_bytes
        self._file.seek(self._starts[key])
        while left > 0:
            wanted = min(CHUNK_BYTES, left)
            chunk = self._file.read(wanted)
            if len(chunk) < wanted:
                raise InvalidDatasetError(f"{key}: the file ended inside its data")
            left -= wanted
            yield chunk
