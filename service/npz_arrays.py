"""Read an uploaded .npz archive in bounded memory, never unpickling.

zipfile reads the central directory in one call, so every read it makes from the file is capped
(:class:`_CappedFile`): a small archive cannot list millions of members. Members are read in
chunks, and only stored or deflated ones are accepted (zipfile decompresses bzip2 and lzma
without an output bound); zipfile never returns more than a member's declared size and checks
its CRC when the last byte is read, and a member that ends early is refused here. Array headers
are parsed by numpy: an object (pickled) dtype is reported, never loaded.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from service.dataset_arrays import CHUNK_BYTES, REQUIRED, ArrayHeader, InvalidDatasetError
from service.dataset_arrays import missing_arrays as _missing

#: Largest central directory read: room for thousands of members; a dataset needs four.
MAX_DIRECTORY_BYTES = 1024 * 1024
_MAX_READ = max(MAX_DIRECTORY_BYTES, CHUNK_BYTES)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)
_NPY_VERSIONS: dict[tuple[int, int], Any] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class _CappedFile(io.FileIO):
    """A read-only file refusing any single read of more than ``_MAX_READ`` bytes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1, /) -> bytes:
        left = self._size - self.tell()
        wanted = left if size is None or size < 0 else min(size, left)
        if wanted > _MAX_READ:
            raise InvalidDatasetError(
                f"the archive's central directory is larger than {MAX_DIRECTORY_BYTES:,} bytes; "
                "a dataset archive needs only its four arrays"
            )
        data = super().read(size)
        return data if data is not None else b""


@contextmanager
def _zip_errors(what: str) -> Iterator[None]:
    """zipfile, zlib and numpy errors as :class:`InvalidDatasetError` naming ``what``."""
    try:
        yield
    except InvalidDatasetError:
        raise
    except _ZIP_ERRORS as exc:
        raise InvalidDatasetError(f"{what}: {exc}") from exc


def _check_magic(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic == _NPY_MAGIC:
        raise InvalidDatasetError("not an .npz archive (a single .npy array?)")
    if magic[:4] not in _ZIP_MAGIC:
        raise InvalidDatasetError(
            "not a readable .npz archive: not a zip file (pickled data is never loaded)"
        )


class NpzArrays:
    """The four arrays of an .npz archive, as numpy's ``NpzFile`` names them (an ArraySource)."""

    def __init__(self, path: Path) -> None:
        _check_magic(path)
        self._file = _CappedFile(path)
        self._members: dict[str, tuple[zipfile.ZipInfo, int]] = {}
        try:
            with _zip_errors("not a readable .npz archive"):
                self._zip = zipfile.ZipFile(self._file)
            self._require_arrays()
            self.headers = {key: self._header(key) for key in REQUIRED}
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _require_arrays(self) -> None:
        found = [name.removesuffix(".npy") for name in self._zip.namelist()]
        if any(key not in found for key in REQUIRED):
            raise _missing(found)

    def _header(self, key: str) -> ArrayHeader:
        name = key if key in self._zip.namelist() else f"{key}.npy"  # NpzFile's lookup order
        info = self._zip.getinfo(name)
        if info.flag_bits & 0x1:
            raise InvalidDatasetError(f"{name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InvalidDatasetError(
                f"{name} uses zip compression method {info.compress_type}; only stored and "
                "deflated members (what numpy writes) are accepted"
            )
        with _zip_errors(f"unreadable array {name} in the archive"), self._zip.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in _NPY_VERSIONS:
                raise InvalidDatasetError(f"{key}: unsupported .npy format version {version}")
            shape, _fortran, dtype = _NPY_VERSIONS[version](handle)
            offset = handle.tell()
        self._members[key] = (info, offset)
        return ArrayHeader(key, tuple(int(n) for n in shape), dtype, info.file_size - offset)

    def chunks(self, key: str) -> Generator[bytes, None, None]:
        info, offset = self._members[key]
        left = info.file_size - offset
        with (
            _zip_errors(f"{info.filename}: the archive is damaged"),
            self._zip.open(info) as handle,
        ):
            handle.read(offset)  # the .npy header, a few KiB
            while left > 0:
                wanted = min(CHUNK_BYTES, left)
                chunk = handle.read(wanted)
                if len(chunk) < wanted:
                    raise InvalidDatasetError(
                        f"{info.filename} ends {left - len(chunk):,} bytes before its declared "
                        "size; the archive is damaged"
                    )
                left -= wanted
                yield chunk
