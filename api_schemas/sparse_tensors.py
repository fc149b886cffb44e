"""Compact files of pruned state dicts: only the surviving weights, plus where they sit.

A pruned weight is mostly zeros, so storing it dense wastes most of its bytes. A compact file is a
plain safetensors file; the engine writes it and the SDK reads it, with numpy alone (no torch).
This module writes format version 2 and reads versions 1 and 2.

Encodings. A tensor without a mask is stored as it is (``dense``). A pruned tensor (one with a
mask) of n entries, k of them surviving, is stored as its surviving values, in row-major order,
plus where they sit, by whichever of these takes fewer bytes (``bits`` on a tie):

``bits`` (dense enough that one bit per entry is the cheapest way to say where survivors are)
    ``ceil(n / 8)`` uint8: ``numpy.packbits`` of the flattened mask with ``bitorder="little"``
    (entry i is bit ``i % 8`` of byte ``i // 8``; padding bits are 0).
``indices`` (sparse enough that positions are cheaper than bits)
    The flat row-major positions of the survivors, ascending, cut into blocks of ``B = 2 ** W``
    positions, W = 8, 16 or 32 (the cheapest): k *indices*, uint8, uint16 or
    uint32, each survivor's position within its block; and ``ceil(n / B)`` *counts*, uint16,
    uint32 or uint64 (the smallest holding B), how many survivors each block holds (the first
    ``counts[0]`` indices lie in block 0, the next ``counts[1]`` in block 1, ...). A tensor of at
    most B entries is one block: its indices are plain flat indices.

Layout, format version 2 (written). The tensors are packed into a few shared one-dimensional
arrays, the *pools*, so that a state dict of many small tensors (batch-norm buffers) does not pay
a safetensors header entry per tensor:

``__values__.<dtype>`` (one per numpy dtype name: ``__values__.float32``, ``__values__.int64``)
    every entry of each dense tensor of that dtype, and the surviving values of each pruned one.
``__bits__`` (uint8)
    the bit masks of the tensors encoded ``bits``.
``__indices__.uint8``, ``__indices__.uint16``, ``__indices__.uint32``
    the indices of the tensors encoded ``indices8``, ``indices16``, ``indices32`` (W = 8, 16, 32).
``__counts__.uint16``, ``__counts__.uint32``, ``__counts__.uint64``
    their counts.

The file holds exactly the pools some tensor uses (empty ones too), and no other tensor. Its
metadata holds ``format: lth-sparse``, ``format_version: 2`` and ``layout``: a JSON object
``{dtype: {encoding: {name: entry}}}`` naming every tensor of the state dict once (no name is
reserved: names live only here), with dtype its numpy dtype name, encoding one of ``dense``,
``bits``, ``indices8``, ``indices16``, ``indices32``, and entry a JSON list:

``"dense"``
    ``[shape, values]``
``"bits"``
    ``[shape, k, values, bits]``
``"indices8"``, ``"indices16"``, ``"indices32"``
    ``[shape, k, values, indices, counts]``

shape is the dense shape (a list of n's factors), k the number of survivors, and values, bits,
indices and counts the offsets, counted in entries of the pool, where the tensor's slice of
``__values__.<dtype>``, ``__bits__``, ``__indices__.*`` and ``__counts__.*`` starts. The slices'
lengths follow from the entry: values n (dense) or k; bits ``ceil(n / 8)``; indices k; counts
``ceil(n / 2 ** W)``. The slices of a pool tile it exactly: none overlaps another, none runs
past its end, and every entry of the pool belongs to one. For example the layout
``{"float32":{"dense":{"fc.bias":[[10],0]},"bits":{"fc.weight":[[10,20],37,10,0]}}}`` describes a
file of ``__values__.float32`` (47 entries: the bias, then the weight's 37 survivors) and
``__bits__`` (25 bytes).

Layout, format version 1 (still read: files of earlier runs). The metadata holds
``format: lth-sparse``, ``format_version: 1`` and, for every pruned tensor ``<name>``,
``tensor:<name>``: a JSON object ``{"encoding": "bits" | "indices", "shape": [...],
"dtype": "float32"}`` with the dense shape and numpy dtype name. Its parts are tensors of their
own: ``<name>.__bits__`` (``bits``), or ``<name>.__indices__`` and ``<name>.__counts__``
(``indices``, W given by the indices' dtype, counts of any unsigned dtype), and
``<name>.__values__``. Every other tensor is stored under its own name, as it is; no name may end
in a part's suffix.

Decoding (either version) puts the values back and every pruned entry at exactly 0.0, so a state
dict whose pruned entries are zero (which the encoder demands) comes back equal, tensor for tensor
and bit for bit for every stored value (a ``-0.0`` at a pruned position comes back as ``0.0``,
which compares equal). Files may come from elsewhere: every offset, length, index and dtype is
checked against the metadata, and a file claiming more than ``max_elements`` entries is refused
before anything is allocated; anything inconsistent is a ``ValueError`` naming the tensor.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from os import PathLike
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

FORMAT_KEY = "format"
FORMAT = "lth-sparse"
VERSION_KEY = "format_version"
#: The version written; ``READABLE`` are those read.
VERSION = "2"
READABLE = ("1", "2")
LAYOUT_KEY = "layout"
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
DENSE = "dense"
#: Version 2's encodings -> index width in bytes (0: none, or a bit mask) and the entry's fields.
ENCODINGS: dict[str, tuple[int, str]] = {
    DENSE: (0, "[shape, values]"),
    "bits": (0, "[shape, k, values, bits]"),
    **{f"indices{8 * w}": (w, "[shape, k, values, indices, counts]") for w in _WIDTHS},
}

Array = npt.NDArray[Any]
Arrays = dict[str, Array]


def part(name: str, role: str) -> str:
    """The file's tensor name of one part (``BITS``, ``VALUES``, ...) of tensor ``name`` in a
    version 1 file."""
    return f"{name}.{role}"


class Slice(NamedTuple):
    """Where one part of a tensor lies in a version 2 file: ``pool[offset : offset + length]``."""

    pool: str
    offset: int
    length: int


@dataclass(frozen=True)
class Entry:
    """One tensor of a version 2 layout; ``positions`` are its bits slice, or its indices and
    counts slices (none for ``dense``)."""

    name: str
    dtype: str
    encoding: str
    shape: tuple[int, ...]
    survivors: int
    values: Slice
    positions: tuple[Slice, ...]

    @property
    def slices(self) -> tuple[Slice, ...]:
        return (self.values, *self.positions)


def _pool_dtype(pool: str) -> str:
    """The dtype a pool must have: every pool but ``__bits__`` is named ``<role>.<dtype>``."""
    return "uint8" if pool == BITS else pool.partition(".")[2]


# ----------------------------------------------------------------------------------- encoding


class _Pools:
    """The shared arrays of a version 2 file, filled a tensor at a time."""

    def __init__(self) -> None:
        self._pieces: dict[str, list[Array]] = {}
        self._sizes: dict[str, int] = {}

    def add(self, pool: str, array: Array) -> int:
        """Append ``array``, flattened, to ``pool``; the offset it starts at there."""
        offset = self._sizes.get(pool, 0)
        self._pieces.setdefault(pool, []).append(array.reshape(-1))
        self._sizes[pool] = offset + array.size
        return offset

    def arrays(self) -> Arrays:
        return {pool: np.concatenate(pieces) for pool, pieces in self._pieces.items()}


def encode(
    tensors: Mapping[str, Array], masks: Mapping[str, Array]
) -> tuple[Arrays, dict[str, str]]:
    """The file's tensors (its pools) and metadata for a state dict and the masks of its pruned
    tensors, in format version 2."""
    unknown = sorted(set(masks) - set(tensors))
    if unknown:
        raise ValueError(f"masks of tensors the state dict lacks: {', '.join(unknown)}")
    pools = _Pools()
    tree: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for name, tensor in tensors.items():
        array = np.asarray(tensor, order="C")  # keeps 0-d (ascontiguousarray would not)
        dtype = array.dtype.name
        if dtype not in DTYPES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be stored")
        shape = list(array.shape)
        values_pool = f"{VALUES}.{dtype}"
        if name not in masks:
            encoding, entry = DENSE, [shape, pools.add(values_pool, array)]
        else:
            width, values, positions = _pruned_parts(name, array, masks[name])
            entry = [shape, values.size, pools.add(values_pool, values)]
            if width == 0:
                (bits,) = positions
                encoding = "bits"
                entry.append(pools.add(BITS, bits))
            else:
                indices, counts = positions
                encoding = f"indices{8 * width}"
                entry.append(pools.add(f"{INDICES}.{indices.dtype.name}", indices))
                entry.append(pools.add(f"{COUNTS}.{counts.dtype.name}", counts))
        tree.setdefault(dtype, {}).setdefault(encoding, {})[name] = entry
    metadata = {
        FORMAT_KEY: FORMAT,
        VERSION_KEY: VERSION,
        LAYOUT_KEY: json.dumps(tree, separators=(",", ":")),
    }
    return pools.arrays(), metadata


def _as_mask(name: str, mask: Array, shape: tuple[int, ...]) -> Array:
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"{name}: mask of shape {array.shape} for a tensor of shape {shape}")
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name}: a mask holds only 0/1 or booleans")
        array = array.astype(np.bool_)
    return array.reshape(-1)


def _pruned_parts(name: str, array: Array, mask: Array) -> tuple[int, Array, list[Array]]:
    """A pruned tensor's index width in bytes (0: a bit mask is cheaper), surviving values, and
    its bit mask or its indices and block counts."""
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
        return width, values, [(positions % block).astype(index_dtype), counts.astype(count_dtype)]
    return 0, values, [np.packbits(keep, bitorder="little")]


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
    """The dense state dict and the bool masks of its pruned tensors, of a file of either
    version."""
    if _version(metadata) == "1":
        return _decode_v1(tensors, metadata, max_elements)
    return _decode_v2(tensors, metadata, max_elements)


def _version(metadata: Mapping[str, str] | None) -> str:
    if not metadata or metadata.get(FORMAT_KEY) != FORMAT:
        raise ValueError(f"not a compact state dict: the metadata lacks {FORMAT_KEY}={FORMAT}")
    version = metadata.get(VERSION_KEY)
    if version not in READABLE:
        raise ValueError(
            f"unknown {FORMAT} format version {version!r}; this reads {' and '.join(READABLE)}"
        )
    return version


# -- version 2


def layout(metadata: Mapping[str, str] | None) -> list[Entry]:
    """Every tensor of a version 2 file, as its metadata lays it out; each entry checked on its
    own (``decode`` checks them against the pools)."""
    if _version(metadata) != "2":
        raise ValueError("a version 1 file has no layout")
    assert metadata is not None  # _version refused None
    text = metadata.get(LAYOUT_KEY)
    if text is None:
        raise ValueError(f"the metadata lacks its {LAYOUT_KEY}")
    try:
        tree = json.loads(text, object_pairs_hook=_unique_keys)
    except _DescribedTwiceError:
        raise
    except ValueError as exc:  # also an integer of more digits than int() takes
        raise ValueError(f"the {LAYOUT_KEY} is not JSON: {exc}") from exc
    if not isinstance(tree, dict):
        raise ValueError(f"the {LAYOUT_KEY} is not a JSON object")
    entries: list[Entry] = []
    seen: set[str] = set()
    for dtype, groups in tree.items():
        if not isinstance(groups, dict):
            raise ValueError(f"the {LAYOUT_KEY}'s {dtype!r} does not map encodings to tensors")
        for encoding, described in groups.items():
            if not isinstance(described, dict):
                raise ValueError(f"the {LAYOUT_KEY}'s {dtype!r} {encoding!r} is not an object")
            for name, fields in described.items():
                if name in seen:
                    raise ValueError(f"{name}: described twice in the {LAYOUT_KEY}")
                seen.add(name)
                entries.append(_entry(name, dtype, encoding, fields))
    return entries


class _DescribedTwiceError(ValueError):
    """A name (or a dtype or encoding) given twice in one object of the layout."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (``json`` keeps the last)."""
    twice = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    if twice:
        raise _DescribedTwiceError(f"{', '.join(twice)}: described twice in the {LAYOUT_KEY}")
    return dict(pairs)


def _entry(name: str, dtype: str, encoding: str, fields: Any) -> Entry:
    """One tensor's entry, checked, with the slices of the pools it claims."""
    if dtype not in DTYPES:
        raise ValueError(f"{name}: unknown dtype {dtype!r}")
    if encoding not in ENCODINGS:
        raise ValueError(f"{name}: unknown encoding {encoding!r}")
    width, form = ENCODINGS[encoding]
    if not isinstance(fields, list) or len(fields) != form.count(",") + 1:
        raise ValueError(f"{name}: {encoding} entry {fields!r} is not {form}")
    shape, numbers = fields[0], fields[1:]
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):  # type() rather than isinstance: True is not a dimension
        raise ValueError(f"{name}: shape {shape!r} is not a list of non-negative integers")
    if not all(type(x) is int and x >= 0 for x in numbers):
        raise ValueError(f"{name}: {encoding} entry {fields!r}: k and offsets are not all >= 0")
    n = math.prod(shape)
    if encoding == DENSE:
        (offset,) = numbers
        values = Slice(f"{VALUES}.{dtype}", offset, n)
        return Entry(name, dtype, encoding, tuple(shape), n, values, ())
    k, offset, *positions = numbers
    if k > n:
        raise ValueError(f"{name}: {k} surviving entries of {n}")
    values = Slice(f"{VALUES}.{dtype}", offset, k)
    if width == 0:
        parts: tuple[Slice, ...] = (Slice(BITS, positions[0], -(-n // 8)),)  # ints: n may be huge
    else:
        index_dtype, count_dtype = (np.dtype(t).name for t in _WIDTHS[width])
        parts = (
            Slice(f"{INDICES}.{index_dtype}", positions[0], k),
            Slice(f"{COUNTS}.{count_dtype}", positions[1], _blocks(n, width)),
        )
    return Entry(name, dtype, encoding, tuple(shape), k, values, parts)


def _check_pools(tensors: Mapping[str, Array], entries: list[Entry]) -> None:
    """The file holds exactly the pools the entries use, each a vector of its dtype, tiled by
    the entries' slices: none past its end, none overlapping, none of its entries unclaimed."""
    claims: dict[str, list[tuple[int, int, str]]] = {}
    for entry in entries:
        for piece in entry.slices:
            claims.setdefault(piece.pool, []).append((piece.offset, piece.length, entry.name))
    stray = sorted(set(tensors) - set(claims))
    if stray:
        raise ValueError(f"tensors the {LAYOUT_KEY} does not describe: {', '.join(stray)}")
    for pool, slices in claims.items():
        if pool not in tensors:
            users = ", ".join(sorted({name for _, _, name in slices}))
            raise ValueError(f"{users}: {pool} is missing from the file")
        array, dtype = tensors[pool], _pool_dtype(pool)
        if array.ndim != 1 or array.dtype.name != dtype:
            raise ValueError(
                f"{pool}: {array.dtype.name} {list(array.shape)}; expected a vector of {dtype}"
            )
        for offset, length, name in slices:
            if offset + length > array.size:
                raise ValueError(
                    f"{name}: its slice [{offset}, {offset + length}) of {pool} runs past the "
                    f"pool's {array.size} entries"
                )
        ordered = sorted(piece for piece in slices if piece[1])
        for (start, length, name), (after, _, other) in pairwise(ordered):
            if start + length > after:
                raise ValueError(
                    f"{other}: its slice of {pool} from {after} overlaps {name}'s "
                    f"[{start}, {start + length})"
                )
        unclaimed = array.size - sum(length for _, length, _ in slices)
        if unclaimed:
            raise ValueError(f"{pool}: {unclaimed} of its {array.size} entries belong to no tensor")


def _decode_v2(
    tensors: Mapping[str, Array], metadata: Mapping[str, str] | None, max_elements: int
) -> tuple[Arrays, Arrays]:
    entries = layout(metadata)
    total = sum(math.prod(entry.shape) for entry in entries)
    if total > max_elements:
        raise ValueError(f"the file claims {total:,} entries; at most {max_elements:,} may load")
    _check_pools(tensors, entries)

    def cut(piece: Slice) -> Array:
        return tensors[piece.pool][piece.offset : piece.offset + piece.length]

    state: Arrays = {}
    masks: Arrays = {}
    for entry in entries:
        name, shape = entry.name, entry.shape
        values = cut(entry.values)
        if entry.encoding == DENSE:
            state[name] = values.reshape(shape)
            continue
        n = math.prod(shape)
        labels = [f"{name} in {piece.pool}" for piece in entry.positions]
        if entry.encoding == "bits":
            keep = _mask_from_bits(labels[0], cut(entry.positions[0]), n)
        else:
            indices, counts = (cut(piece) for piece in entry.positions)
            keep = _mask_from_indices(labels[0], labels[1], indices, counts, n)
        survivors = int(np.count_nonzero(keep))
        if survivors != entry.survivors:
            raise ValueError(
                f"{name}: {entry.survivors} surviving entries declared, its mask has {survivors}"
            )
        restored = np.zeros(n, dtype=entry.dtype)
        restored[keep] = values
        state[name] = restored.reshape(shape)
        masks[name] = keep.reshape(shape)
    return state, masks


# -- version 1


def _decode_v1(
    tensors: Mapping[str, Array], metadata: Mapping[str, str] | None, max_elements: int
) -> tuple[Arrays, Arrays]:
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
            bits = _vector(name, BITS, tensors[part(name, BITS)], np.dtype(np.uint8))
            keep = _mask_from_bits(part(name, BITS), bits, n)
        else:
            keep = _mask_from_indices(
                part(name, INDICES),
                part(name, COUNTS),
                tensors[part(name, INDICES)],
                tensors[part(name, COUNTS)],
                n,
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
    """Each pruned tensor's (encoding, dense shape, dtype name) of a version 1 file, validated."""
    _version(metadata)
    assert metadata is not None  # _version refused None
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


# -- both versions


def _mask_from_bits(label: str, bits: Array, n: int) -> Array:
    """The mask of a bit-mask part (``label`` names it in errors); ``bits`` is uint8."""
    if bits.size != math.ceil(n / 8):
        raise ValueError(f"{label}: {bits.size} bytes for {n} entries (needs {math.ceil(n / 8)})")
    unpacked = np.unpackbits(bits, bitorder="little").astype(np.bool_)
    if unpacked[n:].any():
        raise ValueError(f"{label}: padding bits beyond entry {n} are set")
    return unpacked[:n]


def _mask_from_indices(
    indices_label: str, counts_label: str, indices: Array, counts: Array, n: int
) -> Array:
    width = indices.dtype.itemsize
    if indices.ndim != 1 or indices.dtype.kind != "u" or width not in _WIDTHS:
        raise ValueError(
            f"{indices_label}: {indices.dtype.name} {list(indices.shape)}; "
            "expected a vector of uint8, uint16 or uint32"
        )
    blocks = _blocks(n, width)
    if counts.ndim != 1 or counts.dtype.kind != "u" or counts.size != blocks:
        raise ValueError(
            f"{counts_label}: {counts.dtype.name} {list(counts.shape)}; expected "
            f"{blocks} unsigned counts (blocks of {1 << (8 * width)} entries)"
        )
    block = 1 << (8 * width)
    if counts.size and int(counts.max()) > block:  # also keeps the sum below from wrapping
        raise ValueError(f"{counts_label}: a count exceeds the block size {block}")
    total = int(counts.sum(dtype=np.uint64))
    if total != indices.size:
        raise ValueError(
            f"{counts_label}: counts sum to {total}, but there are {indices.size} indices"
        )
    starts = np.repeat(np.arange(blocks, dtype=np.int64) * block, counts.astype(np.int64))
    positions = starts + indices.astype(np.int64)
    if not (positions[1:] > positions[:-1]).all():
        raise ValueError(f"{indices_label}: positions are not ascending and unique")
    if positions.size and positions[-1] >= n:
        raise ValueError(f"{indices_label}: position {positions[-1]} is not below {n}")
    keep = np.zeros(n, dtype=np.bool_)
    keep[positions] = True
    return keep


# -------------------------------------------------------------------------------------- files


def save_sparse(
    path: str | PathLike[str], tensors: Mapping[str, Array], masks: Mapping[str, Array]
) -> None:
    """Write the compact file (format version 2) of a state dict and the masks of its pruned
    tensors."""
    encoded, metadata = encode(tensors, masks)
    save_file(encoded, str(path), metadata=metadata)


def load_sparse(
    path: str | PathLike[str], *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> tuple[Arrays, Arrays]:
    """The dense state dict of a compact file (either version), and the bool masks of its
    pruned tensors."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata()
            # Refuse a file of another kind, or a malformed description, before reading tensors.
            if _version(metadata) == "1":
                _entries(metadata)
            else:
                layout(metadata)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    except TypeError as exc:  # a dtype numpy has not (bfloat16)
        raise ValueError(f"{path}: holds a tensor numpy cannot represent: {exc}") from exc
    return decode_with_masks(tensors, metadata, max_elements=max_elements)
