"""Hostile dataset uploads over real HTTP: bad values, lying sizes, bombs, hostile headers.

Each is refused with a 422 naming what is wrong and leaves nothing behind; a small upload that
decompresses to hundreds of MiB is validated without the server's memory growing with it.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from service.settings import MiB
from tests.service.conftest import LiveService, ServiceFactory
from tests.service.stored_uploads import stored_uploads

ProblemCheck = Callable[..., dict[str, Any]]
Arrays = dict[str, np.ndarray[Any, Any]]
MAX_CLASSES = 10
MAX_DATASET = 64 * MiB


@pytest.fixture(scope="module")
def hostile(service_factory: ServiceFactory) -> LiveService:
    return service_factory(
        max_upload_bytes=4 * MiB, max_dataset_bytes=MAX_DATASET, max_classes=MAX_CLASSES
    )


def _good(train: int = 20, test: int = 5) -> Arrays:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((train, 1, 4, 4), dtype=np.float32),
        "y_train": np.arange(train, dtype=np.int64) % 3,
        "x_test": rng.random((test, 1, 4, 4), dtype=np.float32),
        "y_test": np.arange(test, dtype=np.int64) % 3,
    }


def _npz(arrays: Arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    buffer = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _members(arrays: Arrays) -> dict[str, bytes]:
    members = {}
    for key, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array)
        members[f"{key}.npy"] = buffer.getvalue()
    return members


def _bomb(arrays: dict[str, tuple[tuple[int, ...], Any]]) -> bytes:
    """An .npz of ``{key: (shape, dtype)}`` filled with 0, 1, 2, 0, ... written in 1 MiB
    blocks: it deflates about a thousandfold and is never held in memory whole."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, (shape, dtype) in arrays.items():
            dtype = np.dtype(dtype)
            block = (np.arange(MiB // dtype.itemsize) % 3).astype(dtype).tobytes()
            left = int(np.prod(shape)) * dtype.itemsize
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                member.write(_npy_header(shape, dtype))
                while left > 0:
                    member.write(block[: min(left, len(block))])
                    left -= len(block)
    return buffer.getvalue()


def _patch_size(archive: bytes, name: str, size: int) -> bytes:
    """Make the central directory declare ``size`` uncompressed bytes for member ``name``."""
    blob = bytearray(archive)
    at = blob.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", blob, at + 28)[0]
        if blob[at + 46 : at + 46 + name_length] == name.encode():
            struct.pack_into("<I", blob, at + 24, size)
            return bytes(blob)
        at = blob.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"no member {name}")


def _flip_crc_byte() -> bytes:
    """A stored archive with one byte of x_train flipped past what reading its header touches."""
    arrays = _good(train=200)
    blob = bytearray(_npz(arrays))  # stored, not compressed: the data is in the file as is
    data = arrays["x_train"].tobytes()
    blob[blob.find(data[:64]) + len(data) - 10] ^= 0xFF
    return bytes(blob)


def _shrunk() -> bytes:
    """The central directory declares x_train.npy (12,928 bytes) to be 5,128 bytes long."""
    return _patch_size(_zip(_members(_good(train=200))), "x_train.npy", 128 + 5000)


def _safetensors(arrays: Arrays, edit: Callable[[dict[str, Any]], None], pad: int = 0) -> bytes:
    """``arrays`` as safetensors with ``edit`` applied to the header (padded by ``pad``)."""
    blob = save(arrays)
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode() + b" " * pad
    return len(text).to_bytes(8, "little") + text + blob[8 + length :]


def _set(key: str, field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(header: dict[str, Any]) -> None:
        header[key][field] = value

    return edit


def _many_members() -> bytes:
    members = _members(_good())
    members.update({f"pad{i:06d}": b"" for i in range(21_000)})
    return _zip(members, zipfile.ZIP_STORED)


def _short_member() -> bytes:
    """x_train.npy whose header declares more data than the member holds."""
    members = _members(_good())
    members["x_train.npy"] = members["x_train.npy"][:228]  # the 128-byte header and 100 bytes
    return _zip(members)


def _bzip2() -> bytes:
    return _zip(_members(_good()), zipfile.ZIP_BZIP2)


def _absurd_npz() -> bytes:
    members = _members(_good())
    members["x_train.npy"] = _npy_header((20, 10**6, 10**6), np.float32)
    members["x_test.npy"] = _npy_header((5, 10**6, 10**6), np.float32)
    return _zip(members)


def _stored_files(service: LiveService) -> set[str]:
    """Uploads in the store, and anything left in the API's receiving area."""
    received = {str(p) for p in service.settings.upload_root.rglob("*") if p.is_file()}
    return received | set(stored_uploads(service))


def _over_the_cap() -> bytes:
    return _bomb(
        {
            "x_train": ((80 * 1024, 1024), np.uint8),
            "y_train": ((80 * 1024,), np.int64),
            "x_test": ((5, 1024), np.uint8),
            "y_test": ((5,), np.int64),
        }
    )


def _case(name: str, filename: str, build: Callable[[], bytes], kind: str, says: str) -> Any:
    """An upload built when its test runs (some take a moment), and the error it must get."""
    return pytest.param(filename, build, kind, says, id=name)


INVALID, TOO_LARGE = "invalid_dataset", "dataset_too_large"
CASES = [
    _case(
        "nan",
        "a.npz",
        lambda: _npz(_good() | {"x_train": np.full((20, 1, 4, 4), np.nan, np.float32)}),
        INVALID,
        "x_train contains NaN or infinite values",
    ),
    _case(
        "inf",
        "a.safetensors",
        lambda: save(_good() | {"x_test": np.full((5, 1, 4, 4), np.inf, np.float64)}),
        INVALID,
        "x_test contains NaN or infinite values",
    ),
    _case(
        "strings",
        "a.npz",
        lambda: _npz(_good() | {"x_train": np.array(["x"] * 20)}),
        INVALID,
        "x_train has dtype <U1; features must be uint8 or floating",
    ),
    _case(
        "complex",
        "a.npz",
        lambda: _npz(_good() | {"x_test": np.ones((5, 1, 4, 4), np.complex64)}),
        INVALID,
        "x_test has dtype complex64; features must be uint8",
    ),
    _case(
        "huge label",
        "a.npz",
        lambda: _npz(_good() | {"y_train": np.full(20, 2**62, np.int64)}),
        INVALID,
        "y_train holds label 4611686018427387904",
    ),
    _case(
        "five dims",
        "a.npz",
        lambda: _npz(_good() | {"x_train": np.ones((20, 1, 1, 4, 4), np.float32)}),
        INVALID,
        "x_train has shape (20, 1, 1, 4, 4); expected",
    ),
    _case(
        "absurd shape",
        "a.npz",
        _absurd_npz,
        TOO_LARGE,
        "the arrays declare 100,000,000,000,200 bytes",
    ),
    _case(
        "bad crc",
        "a.npz",
        _flip_crc_byte,
        INVALID,
        "Bad CRC-32 for file 'x_train.npy'",
    ),
    _case("bzip2", "a.npz", _bzip2, INVALID, "x_train.npy uses zip compression method 12"),
    _case(
        "over the cap",
        "a.npz",
        _over_the_cap,
        TOO_LARGE,
        "x_train holds 83,886,080 bytes uncompressed",
    ),
    _case(
        "size inflated",
        "a.npz",
        lambda: _patch_size(_npz(_good()), "x_train.npy", 0xFFFFFFF0),
        TOO_LARGE,
        "x_train holds 4,294,967,",
    ),
    _case(
        "size shrunk",
        "a.npz",
        _shrunk,
        INVALID,
        "(12,800 bytes) but the file holds 5,000 bytes",
    ),
    _case(
        "short member",
        "a.npz",
        _short_member,
        INVALID,
        "(1,280 bytes) but the file holds 100 bytes",
    ),
    _case(
        "many members",
        "a.npz",
        _many_members,
        INVALID,
        "central directory is larger than 1,048,576 bytes",
    ),
    _case(
        "long header",
        "a.safetensors",
        lambda: _safetensors(_good(), lambda header: None, pad=2 * MiB),
        INVALID,
        "header length is 2,097,",
    ),
    _case(
        "offsets outside",
        "a.safetensors",
        lambda: _safetensors(_good(), _set("x_train", "data_offsets", [0, 10**9])),
        INVALID,
        "x_train: data_offsets [0, 1000000000] lie outside",
    ),
    _case(
        "dtype mismatch",
        "a.safetensors",
        lambda: _safetensors(_good(), _set("x_train", "dtype", "F16")),
        INVALID,
        "of float16 (640 bytes) but the file holds 1,280",
    ),
    _case(
        "absurd tensor",
        "a.safetensors",
        lambda: _safetensors(_good(), _set("x_train", "shape", [20, 10**6, 10**6])),
        TOO_LARGE,
        "the arrays declare",
    ),
    _case(
        "bf16",
        "a.safetensors",
        lambda: _safetensors(_good(), _set("x_test", "dtype", "BF16")),
        INVALID,
        "x_test has dtype 'BF16', which numpy cannot read",
    ),
]


@pytest.mark.parametrize(("filename", "build", "kind", "says"), CASES)
def test_hostile_upload_is_refused_and_nothing_stored(
    hostile: LiveService,
    expect_problem: ProblemCheck,
    filename: str,
    build: Callable[[], bytes],
    kind: str,
    says: str,
) -> None:
    content = build()
    before = _stored_files(hostile)
    with hostile.tenant_client() as client:
        response = client.post("/v1/datasets", files={"file": (filename, content)})
        error = expect_problem(response, 422)["errors"][0]
        assert (error["loc"], error["type"]) == ("file", kind)
        assert says in error["msg"]
        assert client.get("/v1/datasets").json()["data"] == []
    assert _stored_files(hostile) == before


def test_labels_must_lie_below_the_class_cap(
    hostile: LiveService, expect_problem: ProblemCheck
) -> None:
    below = _good() | {"y_test": np.full(5, MAX_CLASSES - 1, np.int32)}
    at = _good() | {"y_test": np.full(5, MAX_CLASSES, np.int32)}
    with hostile.tenant_client() as client:
        response = client.post("/v1/datasets", files={"file": ("ok.safetensors", save(below))})
        assert response.status_code == 201, response.text
        assert response.json()["num_classes"] == MAX_CLASSES
        response = client.post("/v1/datasets", files={"file": ("no.safetensors", save(at))})
        error = expect_problem(response, 422)["errors"][0]
        assert "y_test holds label 10; this service accepts at most 10 classes" in error["msg"]
        assert len(client.get("/v1/datasets").json()["data"]) == 1


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _restart_peak() -> None:
    """Reset the process's peak RSS (Linux ``clear_refs``), so an earlier peak of this test
    process cannot hide growth; where that is not allowed the lifetime peak still bounds it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def test_a_small_upload_that_decompresses_hugely_keeps_memory_bounded(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(max_upload_bytes=2 * MiB, max_dataset_bytes=1024 * MiB)
    examples = 32 * MiB
    content = _bomb(
        {
            "x_train": ((examples, 4), np.uint8),
            "y_train": ((examples,), np.int64),
            "x_test": ((1000, 4), np.uint8),
            "y_test": ((1000,), np.int64),
        }
    )
    assert len(content) < MiB  # for 384 MiB of arrays
    with service.tenant_client() as client:
        client.timeout = 120
        warm_up = client.post("/v1/datasets", files={"file": ("ok.npz", _npz(_good()))})
        assert warm_up.status_code == 201, warm_up.text
        _restart_peak()
        before = _peak_rss_kib()
        response = client.post("/v1/datasets", files={"file": ("bomb.npz", content)})
        grown_mib = (_peak_rss_kib() - before) / 1024
    assert response.status_code == 201, response.text
    assert (response.json()["train_size"], response.json()["num_classes"]) == (examples, 3)
    assert grown_mib < 64, f"the server grew by {grown_mib:.0f} MiB validating the upload"
