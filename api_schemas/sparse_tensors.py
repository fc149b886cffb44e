"""Compact files of pruned state dicts: only the surviving weights, plus where they sit.

A pruned weight is mostly zeros, so storing it dense wastes most of its bytes. A compact file is a
plain safetensors file; the engine writes it and the SDK reads it, with numpy alone (no torch).

Layout, format version 1. The metadata holds ``format: lth-sparse``, ``format_version: 1`` and,
for every pruned tensor ``<name>`` (one with a mask), ``tensor:<name>``: a JSON object
``{"encoding": "bits" | "indices", "shape": [...], "dtype": "float32"}`` with the dense shape and
numpy dtype name. Its parts are stored as

``bits`` (dense enough that one bit per entry is the cheapest way to say where survivors are)
    ``<name>.__bits__``: uint8, ``ceil(n / 8)`` bytes: ``numpy.packbits`` of the flattened mask
    with ``bitorder="little"`` (entry i is bit ``i % 8`` of byte ``i // 8``; padding bits are 0).
    ``<name>.__values__``: the surviving entries in row-major order, one per set bit.
``indices`` (sparse enough that positions are cheaper than bits)
    The flat row-major positions of the survivors, ascending, cut into blocks of
    ``B = 2 ** (8 * w)`` positions, where w is the byte width of the indices:
    ``<name>.__indices__``: uint8, uint16 or uint32: each survivor's position within its block.
    ``<name>.__counts__``: unsigned, ``ceil(n / B)`` entries: how many survivors each block holds
    (the first ``counts[0]`` indices lie in block 0, the next ``counts[1]`` in block 1, ...).
    ``<name>.__values__``: the surviving entries in the same order.
    A tensor of at most B entries is one block: its indices are plain flat indices.

n is the product of the dense shape. Every other tensor (biases, batch-norm buffers, unpruned
layers) is stored under its own name, as it is; no name may end in a part's suffix. The encoder
picks, per pruned tensor, whichever of ``bits`` and ``indices`` (with the width w that costs
least) takes fewer bytes at that tensor's density.

Decoding puts the values back and every pruned entry at exactly 0.0, so a state dict whose pruned
entries are zero (which the encoder demands) comes back equal, tensor for tensor and bit for bit
for every stored value (a ``-0.0`` at a pruned position comes back as ``0.0``, which compares
equal). Files may come from elsewhere: every length, index and dtype is checked against the
metadata, and a file claiming more than ``max_elements`` entries is refused before anything is
allocated; anything inconsistent is a ``ValueError`` naming the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

FORMAT_KEY = "format"
FORMAT = "lth-sparse"
VERSION_KEY = "format_version"
VERSION = "1"
ENTRY_PREFIX = "tensor:"
BITS, VALUES, INDICES, COUNTS = "__bits__", "__values__", "__indices__", "__counts__"
_SUFFIXES = tuple(f".{role}" for role in (BITS, VALUES, INDICES, COUNTS))
#: Most entries (all tensors together) a file may decode to: 8 GiB of float32.
DEFAULT_MAX_ELEMENTS = 1 << 31
#: numpy dtypes safetensors can hold.
DTYPES = frozenset(("bool", "float16", "float32", "float64")) | frozenset(
    f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)
)
#: Index width in bytes -> (index dtype, block counts dtype: the smallest holding the block size).
_WIDTHS: dict[int, tuple[type[np.unsignedinteger[Any]], type[np.unsignedinteger[Any]]]] = {
    1: (np.uint8, np.uint16),
    2: (np.uint16, np.uint32),
    4: (np.uint32, np.uint64),
}

Array = npt.NDArray[Any]
Arrays = dict[str, Array]


def part(name: str, role: str) -> str:
    """The file's tensor name of one part (``BITS``, ``VALUES``, ...) of tensor ``name``."""
    return f"{name}.{role}"


# ----------------------------------------------------------------------------------- encoding


def encode(
    tensors: Mapping[str, Array], masks: Mapping[str, Array]
) -> tuple[Arrays, dict[str, str]]:
    """The file's tensors and metadata for a state dict and the masks of its pruned tensors."""
    unknown = sorted(set(masks) - set(tensors))
    if unknown:
        raise ValueError(f"masks of tensors the state dict lacks: {', '.join(unknown)}")
    out: Arrays = {}
    metadata = {FORMAT_KEY: FORMAT, VERSION_KEY: VERSION}
    for name, tensor in tensors.items():
        if name.endswith(_SUFFIXES):
            raise ValueError(f"{name}: names ending in {', '.join(_SUFFIXES)} are reserved")
        array = np.asarray(tensor, order="C")  # keeps 0-d (ascontiguousarray would not)
        if array.dtype.name not in DTYPES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be stored")
        if name not in masks:
            out[name] = array
            continue
        encoding, parts = _encode_pruned(name, array, masks[name])
        out.update(parts)
        entry = {"encoding": encoding, "shape": list(array.shape), "dtype": array.dtype.name}
        metadata[ENTRY_PREFIX + name] = json.dumps(entry, separators=(",", ":"))
    return out, metadata


def _as_mask(name: str, mask: Array, shape: tuple[int, ...]) -> Array:
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"{name}: mask of shape {array.shape} for a tensor of shape {shape}")
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name}: a mask holds only 0/1 or booleans")
        array = array.astype(np.bool_)
    return array.reshape(-1)


def _encode_pruned(name: str, array: Array, mask: Array) -> tuple[str, Arrays]:
    keep = _as_mask(name, mask, array.shape)
    flat = array.reshape(-1)
    pruned = flat[~keep]
    nonzero = int(np.count_nonzero(pruned != 0))
    if nonzero:
        raise ValueError(f"{name}: {nonzero} pruned entries are not zero; apply the mask first")
    values = np.ascontiguousarray(flat[keep])
    n, k = flat.size, values.size
    width = min(_WIDTHS, key=lambda w: _indices_bytes(n, k, w))
    if _indices_bytes(n, k, width) < math.ceil(n / 8):
        positions = np.flatnonzero(keep)
        index_dtype, count_dtype = _WIDTHS[width]
        block = 1 << (8 * width)
        counts = np.bincount(positions // block, minlength=_blocks(n, width))
        return "indices", {
            part(name, INDICES): (positions % block).astype(index_dtype),
            part(name, COUNTS): counts.astype(count_dtype),
            part(name, VALUES): values,
        }
    bits = np.packbits(keep, bitorder="little")
    return "bits", {part(name, BITS): bits, part(name, VALUES): values}


def _blocks(n: int, width: int) -> int:
    return -(-n // (1 << (8 * width)))


def _indices_bytes(n: int, k: int, width: int) -> int:
    count_size = np.dtype(_WIDTHS[width][1]).itemsize
    return k * width + _blocks(n, width) * count_size


# ----------------------------------------------------------------------------------- decoding


def decode(
    tensors: Mapping[str, Array],
    metadata: Mapping[str, str] | None,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Arrays:
    """The dense state dict a file's tensors and metadata describe."""
    return decode_with_masks(tensors, metadata, max_elements=max_elements)[0]


def decode_with_masks(
    tensors: Mapping[str, Array],
    metadata: Mapping[str, str] | None,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[Arrays, Arrays]:
    """The dense state dict and the bool masks of its pruned tensors."""
    entries = _entries(metadata)
    parts = [key for name, entry in entries.items() for key in _parts(name, entry[0])]
    claimed = set(parts)
    if len(claimed) != len(parts):
        raise ValueError("two tensors of the metadata claim the same stored tensor")
    missing = sorted(claimed - set(tensors))
    if missing:
        raise ValueError(f"tensors missing from the file: {', '.join(missing)}")
    dense = {key: value for key, value in tensors.items() if key not in claimed}
    stray = sorted(key for key in dense if key.endswith(_SUFFIXES) or key in entries)
    if stray:
        raise ValueError(f"tensors the metadata does not describe: {', '.join(stray)}")
    total = sum(math.prod(shape) for _, shape, _ in entries.values())
    total += sum(value.size for value in dense.values())
    if total > max_elements:
        raise ValueError(f"the file claims {total:,} entries; at most {max_elements:,} may load")
    state: Arrays = {}
    masks: Arrays = {}
    for key, value in dense.items():
        if value.dtype.name not in DTYPES:
            raise ValueError(f"{key}: dtype {value.dtype} is not one a state dict holds")
        state[key] = value
    for name, (encoding, shape, dtype) in entries.items():
        values = _vector(name, VALUES, tensors[part(name, VALUES)], np.dtype(dtype))
        n = math.prod(shape)
        if encoding == "bits":
            keep = _mask_from_bits(name, tensors[part(name, BITS)], n)
        else:
            keep = _mask_from_indices(
                name, tensors[part(name, INDICES)], tensors[part(name, COUNTS)], n
            )
        survivors = int(np.count_nonzero(keep))
        if values.size != survivors:
            raise ValueError(f"{name}: {values.size} values for {survivors} surviving entries")
        restored = np.zeros(n, dtype=dtype)
        restored[keep] = values
        state[name] = restored.reshape(shape)
        masks[name] = keep.reshape(shape)
    return state, masks


def _entries(metadata: Mapping[str, str] | None) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Each pruned tensor's (encoding, dense shape, dtype name), validated."""
    if not metadata or metadata.get(FORMAT_KEY) != FORMAT:
        raise ValueError(f"not a compact state dict: the metadata lacks {FORMAT_KEY}={FORMAT}")
    version = metadata.get(VERSION_KEY)
    if version != VERSION:
        raise ValueError(f"unknown {FORMAT} format version {version!r}; this reads {VERSION}")
    entries = {}
    for key, text in metadata.items():
        if not key.startswith(ENTRY_PREFIX):
            continue
        name = key[len(ENTRY_PREFIX) :]
        if name.endswith(_SUFFIXES):
            raise ValueError(f"{name}: names ending in {', '.join(_SUFFIXES)} are reserved")
        try:
            entry = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{name}: metadata is not JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise ValueError(f"{name}: metadata is not a JSON object")
        encoding, shape, dtype = entry.get("encoding"), entry.get("shape"), entry.get("dtype")
        if encoding not in ("bits", "indices"):
            raise ValueError(f"{name}: unknown encoding {encoding!r}")
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):  # type() rather than isinstance: True is not a dimension
            raise ValueError(f"{name}: shape {shape!r} is not a list of non-negative integers")
        if dtype not in DTYPES:
            raise ValueError(f"{name}: unknown dtype {dtype!r}")
        entries[name] = (encoding, tuple(shape), dtype)
    return entries


def _parts(name: str, encoding: str) -> tuple[str, ...]:
    if encoding == "bits":
        return part(name, BITS), part(name, VALUES)
    return part(name, INDICES), part(name, COUNTS), part(name, VALUES)


def _vector(name: str, role: str, array: Array, dtype: np.dtype[Any]) -> Array:
    if array.ndim != 1:
        raise ValueError(f"{part(name, role)}: has shape {list(array.shape)}, not one dimension")
    if array.dtype != dtype:
        raise ValueError(f"{part(name, role)}: dtype {array.dtype.name}, expected {dtype.name}")
    return array


def _mask_from_bits(name: str, bits: Array, n: int) -> Array:
    bits = _vector(name, BITS, bits, np.dtype(np.uint8))
    if bits.size != math.ceil(n / 8):
        raise ValueError(
            f"{part(name, BITS)}: {bits.size} bytes for {n} entries (needs {math.ceil(n / 8)})"
        )
    unpacked = np.unpackbits(bits, bitorder="little").astype(np.bool_)
    if unpacked[n:].any():
        raise ValueError(f"{part(name, BITS)}: padding bits beyond entry {n} are set")
    return unpacked[:n]


def _mask_from_indices(name: str, indices: Array, counts: Array, n: int) -> Array:
    width = indices.dtype.itemsize
    if indices.ndim != 1 or indices.dtype.kind != "u" or width not in _WIDTHS:
        raise ValueError(
            f"{part(name, INDICES)}: {indices.dtype.name} {list(indices.shape)}; "
            "expected a vector of uint8, uint16 or uint32"
        )
    blocks = _blocks(n, width)
    if counts.ndim != 1 or counts.dtype.kind != "u" or counts.size != blocks:
        raise ValueError(
            f"{part(name, COUNTS)}: {counts.dtype.name} {list(counts.shape)}; expected "
            f"{blocks} unsigned counts (blocks of {1 << (8 * width)} entries)"
        )
    block = 1 << (8 * width)
    if counts.size and int(counts.max()) > block:  # also keeps the sum below from wrapping
        raise ValueError(f"{part(name, COUNTS)}: a count exceeds the block size {block}")
    total = int(counts.sum(dtype=np.uint64))
    if total != indices.size:
        raise ValueError(
            f"{part(name, COUNTS)}: counts sum to {total}, but there are {indices.size} indices"
        )
    starts = np.repeat(np.arange(blocks, dtype=np.int64) * block, counts.astype(np.int64))
    positions = starts + indices.astype(np.int64)
    if not (positions[1:] > positions[:-1]).all():
        raise ValueError(f"{part(name, INDICES)}: positions are not ascending and unique")
    if positions.size and positions[-1] >= n:
        raise ValueError(f"{part(name, INDICES)}: position {positions[-1]} is not below {n}")
    keep = np.zeros(n, dtype=np.bool_)
    keep[positions] = True
    return keep


# -------------------------------------------------------------------------------------- files


def save_sparse(
    path: str | PathLike[str], tensors: Mapping[str, Array], masks: Mapping[str, Array]
) -> None:
    """Write the compact file of a state dict and the masks of its pruned tensors."""
    encoded, metadata = encode(tensors, masks)
    save_file(encoded, str(path), metadata=metadata)


def load_sparse(
    path: str | PathLike[str], *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> tuple[Arrays, Arrays]:
    """The dense state dict of a compact file, and the bool masks of its pruned tensors."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata()
            _entries(metadata)  # refuse a file of another kind before reading its tensors
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    except TypeError as exc:  # a dtype numpy has not (bfloat16)
        raise ValueError(f"{path}: holds a tensor numpy cannot represent: {exc}") from exc
    return decode_with_masks(tensors, metadata, max_elements=max_elements)
