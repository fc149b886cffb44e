"""MNIST-format IDX files (LeCun's format), gzipped or not, parsed with numpy alone."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.engine.data.arrays import Array, RawArrays
from worker.engine.data.uris import resolve_path
from worker.engine.errors import DataError

#: IDX type code -> big-endian numpy dtype.
DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

#: The four files of an IDX dataset directory, in RawArrays order.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> Array:
    """One IDX file as a native-endian array; any flaw is a DataError naming the file."""
    try:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == _GZIP_MAGIC
        if gzipped:
            with gzip.open(path, "rb") as handle:
                data = bytearray(handle.read())  # a bytearray keeps the array writable
        else:
            data = bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: unreadable or truncated IDX file ({error})") from error
    return parse_idx(data, str(path))


def parse_idx(data: bytearray, name: str) -> Array:
    """Parse the header (two zero bytes, type code, rank, big-endian uint32 dims) and the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number {bytes(data[:4]).hex()})")
    code, rank = data[2], data[3]
    if code not in DTYPES:
        raise DataError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if rank == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    offset = 4 + 4 * rank
    if len(data) < offset:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, needs {offset})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        problem = "truncated" if len(data) - offset < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: header declares shape {shape} ({expected} bytes of data), "
            f"found {len(data) - offset} bytes"
        )
    array = np.frombuffer(data, dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx_dir(directory: Path, roots: Sequence[Path]) -> RawArrays:
    """The four MNIST files of ``directory``; each is confined to ``roots`` like the directory."""
    paths = [_find(directory, name, roots) for name in FILES]
    x_train, y_train, x_test, y_test = (read_idx(path) for path in paths)
    for images, labels, images_path, labels_path in (
        (x_train, y_train, paths[0], paths[1]),
        (x_test, y_test, paths[2], paths[3]),
    ):
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: labels have shape {labels.shape}, expected (N,)")
        if len(labels) != len(images):
            raise DataError(
                f"{labels_path}: {len(labels)} labels but {images_path.name} has "
                f"{len(images)} images"
            )
    return RawArrays(str(directory), x_train, y_train, x_test, y_test)


def _find(directory: Path, name: str, roots: Sequence[Path]) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return resolve_path(str(candidate), roots)
    raise DataError(
        f"{directory}: missing {name} (or {name}.gz); an IDX dataset directory needs "
        f"{', '.join(FILES)}"
    )
