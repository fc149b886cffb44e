"""Compact state-dict files: exact round trips (random tensors and the registry's models), the
encodings chosen, the sizes reached, malformed files of both versions refused, version 1 files
still read, and the files a real run writes beside its dense ones."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as torch_save_file

from api_schemas import sparse_tensors as st
from api_schemas.spec import LayerRates, ModelSpec
from worker.engine.artifacts import load_sparse_state, load_ticket, save_sparse_state, verify
from worker.engine.data import DataConfig
from worker.engine.imp import run
from worker.engine.masks import apply_mask, dense_mask, density, prunable_layers
from worker.engine.models import REGISTRY, build_model, count_parameters
from worker.engine.paths import RunPaths
from worker.engine.pruning import prune_to_density
from worker.engine.tensorio import load_tensors, read_json, save_tensors

Arrays = dict[str, npt.NDArray[Any]]
Metadata = dict[str, str]


def sparse_tensor(
    rng: np.random.Generator, shape: tuple[int, ...], keep: float, dtype: str = "float32"
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """A random tensor whose entries outside a random mask of density ``keep`` are zero."""
    mask = rng.random(shape) < keep
    values = rng.normal(size=shape).astype(dtype)
    return np.where(mask, values, np.zeros((), dtype)), mask


def assert_identical(a: Arrays, b: Arrays) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def assert_restored(loaded: Arrays, tensors: Arrays, masks: Arrays) -> None:
    """Bit-identical, but for a ``-0.0`` at a pruned position, which comes back ``0.0``."""
    zeroed = {
        key: np.where(masks[key], value, np.zeros((), value.dtype)) if key in masks else value
        for key, value in tensors.items()
    }
    assert_identical(loaded, zeroed)
    for key, mask in masks.items():
        assert not np.signbit(loaded[key][~mask]).any(), key


def random_state(keep: float) -> tuple[Arrays, Arrays]:
    rng = np.random.default_rng(int(keep * 1e4))
    tensors: Arrays = {}
    masks: Arrays = {}
    # > 65,536 entries (several blocks of 16-bit indices), a conv shape, float16 and float64.
    for name, shape, dtype in [
        ("big.weight", (300, 784), "float32"),
        ("conv.weight", (16, 3, 3, 3), "float32"),
        ("half.weight", (40, 70), "float16"),
        ("double.weight", (7,), "float64"),
        ("empty.weight", (0, 5), "float32"),
    ]:
        tensors[name], masks[name] = sparse_tensor(rng, shape, keep, dtype)
    tensors["big.bias"] = rng.normal(size=300).astype(np.float32)
    tensors["bn.num_batches_tracked"] = np.array(17, dtype=np.int64)
    tensors["flags"] = rng.random(5) < 0.5
    return tensors, masks


DENSITIES = [0.0, 0.0005, 0.01, 0.036, 0.107, 0.168, 0.51, 1.0]


@pytest.mark.parametrize("keep", DENSITIES)
def test_round_trip_is_bit_identical_at_every_density(keep: float, tmp_path: Path) -> None:
    tensors, masks = random_state(keep)
    path = tmp_path / "state.sparse.safetensors"
    st.save_sparse(path, tensors, masks)
    state, got_masks = st.load_sparse(path)
    assert_identical(state, tensors)
    assert_identical(got_masks, masks)
    for name, mask in masks.items():
        assert not state[name][~mask].any(), "pruned entries are exactly zero"
    assert st.decode(*st.encode(tensors, masks)).keys() == tensors.keys()
    # Version 2: a handful of shared pools, whatever the number of tensors.
    stored = load_file(str(path))
    assert all(key.startswith("__") for key in stored)
    assert {"__values__.float32", "__values__.float16", "__values__.int64"} <= stored.keys()
    assert len(stored) <= 5 + 1 + 2 * 3  # five dtypes' values, bits, three index widths


def layout_of(metadata: Metadata) -> dict[str, st.Entry]:
    assert metadata["format_version"] == "2"
    return {entry.name: entry for entry in st.layout(metadata)}


def encodings(tensors: Arrays, masks: Arrays) -> dict[str, str]:
    """Each tensor's encoding (``dense``: stored as it is)."""
    _, metadata = st.encode(tensors, masks)
    entries = layout_of(metadata)
    assert entries.keys() == tensors.keys()
    return {name: entry.encoding for name, entry in entries.items()}


def test_the_smaller_encoding_is_chosen_per_tensor() -> None:
    rng = np.random.default_rng(1)
    tensors: Arrays = {"bias": np.ones(4, np.float32)}
    masks: Arrays = {}
    for name, keep in [("none", 0.0), ("sparse", 0.03), ("half", 0.5), ("full", 1.0)]:
        tensors[name], masks[name] = sparse_tensor(rng, (300, 784), keep)
    assert encodings(tensors, masks) == {
        "bias": "dense",
        "none": "indices32",  # one block of 2**32: 8 bytes of counts
        "sparse": "indices8",
        "half": "bits",
        "full": "bits",
    }
    encoded, metadata = st.encode(tensors, masks)
    half = layout_of(metadata)["half"]
    assert half.positions == (st.Slice("__bits__", 0, math.ceil(300 * 784 / 8)),)
    assert encoded["__bits__"].nbytes == 2 * math.ceil(300 * 784 / 8)
    assert encoded["__indices__.uint8"].size == int(masks["sparse"].sum())
    # Below 1/128 of the entries, 16-bit positions in blocks of 65,536 beat 8-bit ones.
    very, very_mask = sparse_tensor(rng, (300, 784), 0.002)
    tiny, tiny_metadata = st.encode({"w": very}, {"w": very_mask})
    assert layout_of(tiny_metadata)["w"].encoding == "indices16"
    assert tiny["__indices__.uint16"].dtype == np.uint16 and tiny["__counts__.uint32"].size == 4
    small, _ = st.encode({"w": np.zeros(100, np.float32)}, {"w": np.zeros(100, bool)})
    assert small["__counts__.uint16"].size == 1  # one block: plain flat indices


def test_the_documented_example_is_what_is_written() -> None:
    weight = np.zeros((10, 20), np.float32)
    keep = np.zeros((10, 20), bool)
    keep.flat[np.arange(0, 200, 5)[:37]] = True
    weight[keep] = np.arange(1, 38, dtype=np.float32)
    encoded, metadata = st.encode(
        {"fc.bias": np.ones(10, np.float32), "fc.weight": weight}, {"fc.weight": keep}
    )
    assert metadata == {
        "format": "lth-sparse",
        "format_version": "2",
        "layout": '{"float32":{"dense":{"fc.bias":[[10],0]},'
        '"bits":{"fc.weight":[[10,20],37,10,0]}}}',
    }
    assert {key: value.size for key, value in encoded.items()} == {
        "__values__.float32": 47,
        "__bits__": 25,
    }
    assert st.__doc__ is not None and metadata["layout"] in st.__doc__


def test_names_that_v1_reserved_are_plain_names_in_v2(tmp_path: Path) -> None:
    weight = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    keep = weight != 0
    tensors: Arrays = {"w.__values__": weight, "__bits__": np.ones(3, np.uint8), "w": weight.copy()}
    path = tmp_path / "names.sparse.safetensors"
    st.save_sparse(path, tensors, {"w.__values__": keep, "w": keep})
    state, masks = st.load_sparse(path)
    assert_identical(state, tensors)
    assert masks.keys() == {"w.__values__", "w"}


def pruned_model(
    arch: str, keep: float, strategy: str, *, train: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A registry model's initial state dict (its batch-norm statistics moved by a forward pass in
    training mode when ``train``) magnitude-pruned to ``keep`` of its weights in one shot."""
    torch.manual_seed(0)
    shape = (1, 28, 28) if arch == "lenet_300_100" else (3, 32, 32)
    model = build_model(ModelSpec(arch=arch), shape, 10)
    if train:
        model.train()
        model(torch.randn(4, *shape))
    state = model.state_dict()
    mask = prune_to_density(
        state,
        dense_mask(model),
        prunable_layers(model),
        keep,
        strategy=strategy,
        rates=LayerRates(),
    )
    assert density(mask) == pytest.approx(keep, abs=1e-4)
    return apply_mask(state, mask), mask


@pytest.mark.parametrize("keep", [1.0, 0.51, 0.107, 0.036, 0.005])
@pytest.mark.parametrize("arch", ["lenet_300_100", "conv4", "resnet20"])
def test_real_models_round_trip_bit_identical(arch: str, keep: float, tmp_path: Path) -> None:
    assert arch in REGISTRY
    strategy = "layerwise" if arch == "lenet_300_100" else "global"
    state, mask = pruned_model(arch, keep, strategy, train=True)
    tensors = {key: value.numpy() for key, value in state.items()}
    masks = {key: value.numpy() for key, value in mask.items()}
    path = tmp_path / "model.sparse.safetensors"
    negative_zeros = any(np.signbit(v[~masks[k]]).any() for k, v in tensors.items() if k in masks)
    assert negative_zeros == (keep < 1)  # apply_mask leaves -0.0 where it pruned negatives
    st.save_sparse(path, tensors, masks)
    loaded, loaded_masks = st.load_sparse(path)
    assert_restored(loaded, tensors, masks)
    assert_identical(loaded_masks, masks)
    # Through torch too, as the engine and the SDK load them.
    back, back_mask = load_sparse_state(path)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
    assert all(torch.equal(back_mask[k], v.to(torch.bool)) for k, v in mask.items())


SIZES = [
    ("lenet_300_100", "layerwise"),
    ("lenet_300_100", "global"),
    ("conv2", "global"),  # layer-wise at the default rates cannot reach 3.6%
    ("conv4", "global"),
    ("resnet20", "global"),
]


@pytest.mark.parametrize(("arch", "strategy"), SIZES)
@pytest.mark.parametrize(("keep", "limit"), [(0.10, 0.15), (0.036, 0.06)])
def test_compact_file_sizes(
    arch: str, strategy: str, keep: float, limit: float, tmp_path: Path
) -> None:
    state, mask = pruned_model(arch, keep, strategy)
    dense, sparse = tmp_path / "ticket.safetensors", tmp_path / "ticket.sparse.safetensors"
    save_tensors(dense, state)
    save_sparse_state(sparse, state, mask)
    ratio = sparse.stat().st_size / dense.stat().st_size
    assert ratio <= limit, f"{arch}: {ratio:.2%} of the dense file at {keep:.1%} density"

    loaded, loaded_mask = load_sparse_state(sparse)
    reference = load_tensors(dense)
    assert loaded.keys() == reference.keys() and loaded_mask.keys() == mask.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
        if key in mask:
            assert torch.equal(loaded_mask[key], mask[key])
            assert torch.equal(
                loaded[key][mask[key]].view(torch.int32), value[mask[key]].view(torch.int32)
            )
            assert bool((loaded[key][~mask[key]] == 0).all())


def test_buffers_and_integer_tensors_survive_through_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(ModelSpec(arch="resnet20"), (3, 32, 32), 10)
    assert count_parameters(model) == 272_474
    model.train()
    model(torch.randn(4, 3, 32, 32))  # running statistics and num_batches_tracked move
    state = model.state_dict()
    mask = dense_mask(model)
    mask = prune_to_density(
        state, mask, prunable_layers(model), 0.168, strategy="global", rates=LayerRates()
    )
    state = apply_mask(state, mask)
    path = tmp_path / "resnet.sparse.safetensors"
    save_sparse_state(path, state, mask)
    loaded, _ = load_sparse_state(path)
    assert loaded.keys() == state.keys()
    assert any(v.dtype == torch.int64 for v in loaded.values())
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_encoding_refuses_what_it_could_not_restore() -> None:
    weight = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    keep = np.array([[True, False, True], [True, True, True]])
    with pytest.raises(ValueError, match="1 pruned entries are not zero"):
        st.encode({"w": weight}, {"w": keep})
    with pytest.raises(ValueError, match="mask of shape"):
        st.encode({"w": weight}, {"w": keep.reshape(3, 2)})
    with pytest.raises(ValueError, match="lacks: nope"):
        st.encode({"w": weight}, {"nope": keep})
    with pytest.raises(ValueError, match="cannot be stored"):
        st.encode({"c": np.zeros(2, np.complex64)}, {})
    with pytest.raises(ValueError, match="a mask holds only 0/1"):
        st.encode({"w": weight * keep}, {"w": keep * 2})


# ------------------------------------------------------------------------- malformed, version 2


def valid_file() -> tuple[Arrays, Metadata]:
    """A version 2 file: ``sparse_w`` last in the float32 values, uint8 indices and uint16
    counts, ``dense_w`` the only user of the bits."""
    rng = np.random.default_rng(2)
    tensors: Arrays = {"steps": np.array(3, np.int64)}
    masks: Arrays = {}
    tensors["half_w"], masks["half_w"] = sparse_tensor(rng, (50, 50), 0.02, "float16")
    tensors["b"] = np.ones(3, np.float32)
    tensors["dense_w"], masks["dense_w"] = sparse_tensor(rng, (20, 30), 0.5)
    tensors["sparse_w"], masks["sparse_w"] = sparse_tensor(rng, (300, 400), 0.02)
    assert encodings(tensors, masks) == {
        "steps": "dense",
        "half_w": "indices8",
        "b": "dense",
        "dense_w": "bits",
        "sparse_w": "indices8",
    }
    return st.encode(tensors, masks)


def edit(m: Metadata, change: Callable[[dict[str, Any]], object]) -> None:
    """Change the layout's JSON tree in place."""
    tree = json.loads(m["layout"])
    change(tree)
    m["layout"] = json.dumps(tree, separators=(",", ":"))


def fields(m: Metadata, name: str) -> list[Any]:
    """A copy of one tensor's entry."""
    for groups in json.loads(m["layout"]).values():
        for described in groups.values():
            if name in described:
                return list(described[name])
    raise KeyError(name)


def set_fields(m: Metadata, name: str, new: Any) -> None:
    def change(tree: dict[str, Any]) -> None:
        for groups in tree.values():
            for described in groups.values():
                if name in described:
                    described[name] = new

    edit(m, change)


def change_field(m: Metadata, name: str, at: int, value: Any) -> None:
    new = fields(m, name)
    new[at] = value
    set_fields(m, name, new)


def _name_twice(t: Arrays, m: Metadata) -> None:
    text = '"b":' + json.dumps(fields(m, "b"), separators=(",", ":"))
    assert text in m["layout"]
    m["layout"] = m["layout"].replace(text, f"{text},{text}", 1)


def _in_two_groups(t: Arrays, m: Metadata) -> None:
    edit(m, lambda tree: tree["float32"]["dense"].update(dense_w=[[600], 0]))


def _regroup(dtype: str, encoding: str, new_dtype: str, new_encoding: str) -> Callable[..., None]:
    def spoil(t: Arrays, m: Metadata) -> None:
        def change(tree: dict[str, Any]) -> None:
            moved = tree[dtype].pop(encoding)
            tree.setdefault(new_dtype, {})[new_encoding] = moved

        edit(m, change)

    return spoil


def _one_survivor_fewer(t: Arrays, m: Metadata) -> None:
    # dense_w declares one survivor fewer than its bits mark; its values slice shrinks by one
    # and sparse_w's starts one earlier, so the slices still tile the pool exactly.
    dense = fields(m, "dense_w")
    change_field(m, "dense_w", 1, dense[1] - 1)
    change_field(m, "sparse_w", 2, fields(m, "sparse_w")[2] - 1)
    values = t["__values__.float32"]
    t["__values__.float32"] = np.delete(values, dense[2] + dense[1] - 1)


def _one_survivor_more(t: Arrays, m: Metadata) -> None:
    # sparse_w is last in its pools: one more value and index, but the counts unchanged.
    change_field(m, "sparse_w", 1, fields(m, "sparse_w")[1] + 1)
    t["__values__.float32"] = np.append(t["__values__.float32"], np.float32(1))
    t["__indices__.uint8"] = np.append(t["__indices__.uint8"], np.uint8(255))


def _overlap_values(t: Arrays, m: Metadata) -> None:
    change_field(m, "dense_w", 2, fields(m, "dense_w")[2] - 1)  # its first value is b's last


def _share_indices(t: Arrays, m: Metadata) -> None:
    change_field(m, "sparse_w", 3, fields(m, "half_w")[3])


def _past_the_end(name: str, at: int) -> Callable[..., None]:
    def spoil(t: Arrays, m: Metadata) -> None:
        change_field(m, name, at, fields(m, name)[at] + 1)

    return spoil


def _unclaimed(t: Arrays, m: Metadata) -> None:
    t["__bits__"] = np.append(t["__bits__"], np.uint8(0))


def _set_padding(t: Arrays, m: Metadata) -> None:
    change_field(m, "dense_w", 0, [599])  # still 75 bytes, but the last bit is now padding
    t["__bits__"][-1] |= 0x80


def _sparse_counts(t: Arrays, m: Metadata) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    entry = fields(m, "sparse_w")
    blocks = math.ceil(120_000 / 256)
    counts = t["__counts__.uint16"][entry[4] : entry[4] + blocks]
    indices = t["__indices__.uint8"][entry[3] : entry[3] + entry[1]]
    return counts, indices


def _swap_first_indices(t: Arrays, m: Metadata) -> None:
    counts, indices = _sparse_counts(t, m)
    block = int(np.flatnonzero(counts >= 2)[0])
    at = int(counts[:block].sum())
    indices[at], indices[at + 1] = indices[at + 1], indices[at]


def _index_past_the_end(t: Arrays, m: Metadata) -> None:
    # 120,000 entries: 468 full blocks of 256 positions and a last one of 192.
    counts, indices = _sparse_counts(t, m)
    assert counts.size == 469 and counts[-1] > 0 and indices[-2] < 250
    indices[-1] = 250


def _move_a_survivor_to_block_0(t: Arrays, m: Metadata) -> None:
    counts, indices = _sparse_counts(t, m)
    assert counts[1] > 0 and indices[counts[0]] < indices[counts[0] - 1]
    counts[0] += 1
    counts[1] -= 1


def _a_count_beyond_its_block(t: Arrays, m: Metadata) -> None:
    counts, _ = _sparse_counts(t, m)
    moved = 257 - int(counts[0])
    assert counts[1:].sum() >= moved
    counts[0] = 257
    for i in range(1, counts.size):  # take the survivors from the blocks after it
        taken = min(moved, int(counts[i]))
        counts[i] -= taken
        moved -= taken


def _retype(pool: str, dtype: Any) -> Callable[..., None]:
    def spoil(t: Arrays, m: Metadata) -> None:
        t[pool] = t[pool].astype(dtype)

    return spoil


MALFORMED_V2: dict[str, tuple[Callable[[Arrays, Metadata], object], str]] = {
    "unknown version": (lambda t, m: m.update(format_version="3"), "version '3'; this reads 1 and"),
    "another format": (lambda t, m: m.update(format="npz"), "not a compact state dict"),
    "no layout": (lambda t, m: m.pop("layout"), "lacks its layout"),
    "layout not JSON": (lambda t, m: m.update(layout="{"), "layout is not JSON"),
    "a number of 5,000 digits": (
        lambda t, m: m.update(layout=m["layout"].replace("[[3],", "[[" + "9" * 5000 + "],")),
        "layout is not JSON",
    ),
    "layout not an object": (lambda t, m: m.update(layout="[]"), "not a JSON object"),
    "a group not an object": (lambda t, m: m.update(layout='{"float32":[]}'), "does not map"),
    "a name twice in a group": (_name_twice, "b: described twice"),
    "a name in two groups": (_in_two_groups, "dense_w: described twice"),
    "unknown dtype": (_regroup("float32", "bits", "bfloat16", "bits"), "dense_w: unknown dtype"),
    "unknown encoding": (_regroup("float32", "bits", "float32", "rle"), "unknown encoding 'rle'"),
    "bits as indices": (
        _regroup("float32", "bits", "float32", "indices16"),
        r"is not \[shape, k, values, indices, counts\]",
    ),
    "an entry too short": (lambda t, m: set_fields(m, "b", [[3]]), r"is not \[shape, values\]"),
    "an entry not a list": (lambda t, m: set_fields(m, "b", {"shape": [3]}), "b: dense entry"),
    "negative offset": (lambda t, m: change_field(m, "b", 1, -1), "b: dense entry"),
    "boolean offset": (lambda t, m: change_field(m, "b", 1, True), "not all >= 0"),
    "float survivors": (lambda t, m: change_field(m, "dense_w", 1, 300.0), "dense_w: bits entry"),
    "negative dimension": (lambda t, m: change_field(m, "b", 0, [-1]), "b: shape"),
    "boolean dimension": (lambda t, m: change_field(m, "b", 0, [True]), "non-negative"),
    "more survivors than entries": (
        lambda t, m: change_field(m, "dense_w", 1, 601),
        "dense_w: 601 surviving entries of 600",
    ),
    "values past the end": (_past_the_end("sparse_w", 2), "sparse_w: its slice .* runs past"),
    "bits past the end": (_past_the_end("dense_w", 3), r"dense_w: .* of __bits__ runs past"),
    "indices past the end": (_past_the_end("sparse_w", 3), "of __indices__.uint8 runs past"),
    "counts past the end": (_past_the_end("sparse_w", 4), "of __counts__.uint16 runs past"),
    "a dense shape past the end": (
        lambda t, m: change_field(m, "steps", 0, [2]),
        "steps: .* of __values__.int64 runs past",
    ),
    "overlapping values": (_overlap_values, "dense_w: its slice of __values__.float32 .* b's"),
    "shared indices": (_share_indices, "overlaps half_w's"),
    "a larger dense shape": (lambda t, m: change_field(m, "b", 0, [4]), "overlaps b's"),
    "unclaimed entries": (_unclaimed, "__bits__: 1 of its 76 entries belong to no tensor"),
    "fewer survivors than bits": (_one_survivor_fewer, "declared, its mask has"),
    "more survivors than counts": (
        _one_survivor_more,
        r"sparse_w in __counts__.uint16: counts sum to \d+, but there are",
    ),
    "padding bits set": (_set_padding, "padding bits"),
    "indices not ascending": (_swap_first_indices, "sparse_w in __indices__.uint8: .* ascending"),
    "index past the end": (_index_past_the_end, "not below 120000"),
    "counts shifted between blocks": (_move_a_survivor_to_block_0, "not ascending"),
    "a count beyond its block": (_a_count_beyond_its_block, "exceeds the block size 256"),
    "values of another dtype": (
        _retype("__values__.float32", np.float64),
        "__values__.float32: float64 .* expected a vector of float32",
    ),
    "signed indices": (_retype("__indices__.uint8", np.int8), "expected a vector of uint8"),
    "wide bits": (_retype("__bits__", np.uint16), "expected a vector of uint8"),
    "counts of another width": (_retype("__counts__.uint16", np.uint32), "vector of uint16"),
    "a pool of two dimensions": (
        lambda t, m: t.update(__bits__=t["__bits__"].reshape(3, 25)),
        r"uint8 \[3, 25\]; expected a vector",
    ),
    "a pool missing": (
        lambda t, m: t.pop("__counts__.uint16"),
        "half_w, sparse_w: __counts__.uint16 is missing",
    ),
    "a stray tensor": (
        lambda t, m: t.update(dense_w=np.zeros(600, np.float32)),
        "does not describe: dense_w",
    ),
    "a pool of another width": (
        lambda t, m: t.update({"__indices__.uint16": t.pop("__indices__.uint8").astype(np.uint16)}),
        "does not describe: __indices__.uint16",
    ),
    "too many entries": (
        lambda t, m: change_field(m, "sparse_w", 0, [1 << 20, 1 << 20]),
        "claims 1,099,511,[0-9,]+ entries; at most 2,147,483,648 may load",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_V2))
def test_malformed_files_are_refused(case: str, tmp_path: Path) -> None:
    tensors, metadata = valid_file()
    path = tmp_path / "ok.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    st.load_sparse(path)  # the unchanged file loads

    spoil, message = MALFORMED_V2[case]
    spoil(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        st.load_sparse(path)


@pytest.mark.parametrize(
    "shape",
    [[1 << 40], [1 << 20, 1 << 20, 1 << 20], [1 << 31, 2], [10**200, 10**200]],
    ids=["2^40", "2^60", "2^32", "10^400"],
)
@pytest.mark.parametrize("name", ["b", "dense_w", "sparse_w"])
def test_huge_shapes_are_refused_before_allocating(
    name: str, shape: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors, metadata = valid_file()
    change_field(metadata, name, 0, shape)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("allocated before the size was checked")

    monkeypatch.setattr(np, "zeros", refuse)
    monkeypatch.setattr(np, "unpackbits", refuse)
    with pytest.raises(ValueError, match="may load"):
        st.decode(tensors, metadata)


def test_the_size_limit_counts_every_tensor() -> None:
    tensors, metadata = valid_file()
    total = 1 + 2500 + 3 + 600 + 120_000
    st.decode(tensors, metadata, max_elements=total)
    with pytest.raises(ValueError, match=f"claims {total:,} entries; at most {total - 1:,}"):
        st.decode(tensors, metadata, max_elements=total - 1)
    with pytest.raises(ValueError, match="a version 1 file has no layout"):
        st.layout({"format": "lth-sparse", "format_version": "1"})


def test_files_of_other_kinds_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        st.load_sparse(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(ValueError, match="not a compact state dict"):
        st.load_sparse(plain)
    for version, layout in [("1", None), ("2", '{"bfloat16":{"dense":{"w":[[3],0]}}}')]:
        halves = tmp_path / f"bf16-v{version}.safetensors"
        metadata = {"format": "lth-sparse", "format_version": version}
        if layout is None:
            torch_save_file({"w": torch.zeros(3, dtype=torch.bfloat16)}, str(halves), metadata)
        else:
            pools = {"__values__.bfloat16": torch.zeros(3, dtype=torch.bfloat16)}
            torch_save_file(pools, str(halves), metadata | {"layout": layout})
        with pytest.raises(ValueError, match="bfloat16"):  # numpy has no bfloat16 of its own
            st.load_sparse(halves)
    with pytest.raises(ValueError, match="at most 10 may load"):
        st.decode(*valid_file(), max_elements=10)


# ---------------------------------------------------------------------------------- version 1


def encode_v1(tensors: Arrays, masks: Arrays) -> tuple[Arrays, Metadata]:
    """Version 1 as the module's docstring documents it (and as earlier runs wrote it)."""
    out: Arrays = {}
    metadata = {"format": "lth-sparse", "format_version": "1"}
    for name, tensor in tensors.items():
        if name not in masks:
            out[name] = tensor
            continue
        keep, flat = masks[name].reshape(-1).astype(bool), tensor.reshape(-1)
        n, k = flat.size, int(keep.sum())
        cost = {w: k * w + -(-n // (1 << (8 * w))) * 2 * w for w in (1, 2, 4)}
        width = min(cost, key=lambda w: cost[w])
        if cost[width] < math.ceil(n / 8):
            block, positions = 1 << (8 * width), np.flatnonzero(keep)
            out[f"{name}.__indices__"] = (positions % block).astype(f"uint{8 * width}")
            counts = np.bincount(positions // block, minlength=-(-n // block))
            out[f"{name}.__counts__"] = counts.astype(f"uint{16 * width}")
            encoding = "indices"
        else:
            out[f"{name}.__bits__"] = np.packbits(keep, bitorder="little")
            encoding = "bits"
        out[f"{name}.__values__"] = np.ascontiguousarray(flat[keep])
        entry = {"encoding": encoding, "shape": list(tensor.shape), "dtype": tensor.dtype.name}
        metadata[f"tensor:{name}"] = json.dumps(entry, separators=(",", ":"))
    return out, metadata


def save_v1(path: Path, tensors: Arrays, masks: Arrays) -> None:
    encoded, metadata = encode_v1(tensors, masks)
    save_file(encoded, str(path), metadata=metadata)


@pytest.mark.parametrize("keep", DENSITIES)
def test_version_1_files_still_load_bit_identical(keep: float, tmp_path: Path) -> None:
    tensors, masks = random_state(keep)
    path = tmp_path / "v1.sparse.safetensors"
    save_v1(path, tensors, masks)
    assert any(key.endswith(".__values__") for key in load_file(str(path)))
    state, got_masks = st.load_sparse(path)
    assert_identical(state, tensors)
    assert_identical(got_masks, masks)


def test_a_version_1_resnet_loads_as_its_version_2_copy(tmp_path: Path) -> None:
    state, mask = pruned_model("resnet20", 0.036, "global", train=True)
    tensors = {key: value.numpy() for key, value in state.items()}
    masks = {key: value.numpy() for key, value in mask.items()}
    v1, v2 = tmp_path / "v1.sparse.safetensors", tmp_path / "v2.sparse.safetensors"
    save_v1(v1, tensors, masks)
    save_sparse_state(v2, state, mask)
    kinds = [
        json.loads(text)["encoding"]
        for key, text in encode_v1(tensors, masks)[1].items()
        if key.startswith("tensor:")
    ]
    assert {"bits", "indices"} <= set(kinds)
    (a, a_masks), (b, b_masks) = st.load_sparse(v1), st.load_sparse(v2)
    assert_restored(a, tensors, masks)
    assert_restored(b, tensors, masks)
    assert_identical(a_masks, b_masks)
    loaded, _ = load_sparse_state(v1)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert v2.stat().st_size < v1.stat().st_size


def valid_v1_file() -> tuple[Arrays, Metadata]:
    rng = np.random.default_rng(2)
    tensors: Arrays = {"b": np.ones(3, np.float32)}
    masks: Arrays = {}
    tensors["dense_w"], masks["dense_w"] = sparse_tensor(rng, (20, 30), 0.5)
    tensors["sparse_w"], masks["sparse_w"] = sparse_tensor(rng, (300, 400), 0.02)
    encoded, metadata = encode_v1(tensors, masks)
    assert {"dense_w.__bits__", "sparse_w.__indices__", "b"} <= encoded.keys()
    return encoded, metadata


def entry_v1(metadata: Metadata, name: str, **changes: Any) -> None:
    metadata[f"tensor:{name}"] = json.dumps(json.loads(metadata[f"tensor:{name}"]) | changes)


def _v1_set_padding(t: Arrays, m: Metadata) -> None:
    entry_v1(m, "dense_w", shape=[599])  # still 75 bytes, but the last bit is now padding
    t["dense_w.__bits__"][-1] |= 0x80


def _v1_swap_first_indices(t: Arrays, m: Metadata) -> None:
    indices = t["sparse_w.__indices__"]
    assert t["sparse_w.__counts__"][0] >= 2
    indices[0], indices[1] = indices[1], indices[0]


def _v1_drop_a_count(t: Arrays, m: Metadata) -> None:
    t["sparse_w.__counts__"] = t["sparse_w.__counts__"][:-1]


def _v1_double_counts(t: Arrays, m: Metadata) -> None:
    t["sparse_w.__counts__"] = t["sparse_w.__counts__"] * 2


def _v1_move_a_survivor_to_block_0(t: Arrays, m: Metadata) -> None:
    counts, indices = t["sparse_w.__counts__"], t["sparse_w.__indices__"]
    assert counts[1] > 0 and indices[counts[0]] < indices[counts[0] - 1]
    counts[0] += 1
    counts[1] -= 1


def _v1_wrap_the_count_sum(t: Arrays, m: Metadata) -> None:
    counts = t["sparse_w.__counts__"].astype(np.uint64)
    counts[:2] += np.uint64(1 << 63)  # the sum wraps around to the right total
    assert int(counts.sum(dtype=np.uint64)) == t["sparse_w.__indices__"].size
    t["sparse_w.__counts__"] = counts


def _v1_index_past_the_end(t: Arrays, m: Metadata) -> None:
    # 120,000 entries: 468 full blocks of 256 positions and a last one of 192.
    counts, indices = t["sparse_w.__counts__"], t["sparse_w.__indices__"]
    assert counts.size == 469 and counts[-1] > 0 and indices[-2] < 250
    indices[-1] = 250


def _v1_signed_indices(t: Arrays, m: Metadata) -> None:
    t["sparse_w.__indices__"] = t["sparse_w.__indices__"].astype(np.int32)


def _v1_bits_too_short(t: Arrays, m: Metadata) -> None:
    t["dense_w.__bits__"] = t["dense_w.__bits__"][:-1]


def _v1_a_value_too_few(t: Arrays, m: Metadata) -> None:
    t["dense_w.__values__"] = t["dense_w.__values__"][:-1]


def _v1_values_in_float64(t: Arrays, m: Metadata) -> None:
    t["dense_w.__values__"] = t["dense_w.__values__"].astype(np.float64)


MALFORMED_V1: dict[str, tuple[Callable[[Arrays, Metadata], object], str]] = {
    "unknown version": (lambda t, m: m.update(format_version="0"), "unknown lth-sparse format"),
    "another format": (lambda t, m: m.update(format="npz"), "not a compact state dict"),
    "bits too short": (_v1_bits_too_short, "bytes for 600 entries"),
    "padding bits set": (_v1_set_padding, "padding bits"),
    "a value too few": (_v1_a_value_too_few, "values for"),
    "values of another dtype": (_v1_values_in_float64, "expected float32"),
    "indices out of range": (_v1_index_past_the_end, "not below 120000"),
    "indices not ascending": (_v1_swap_first_indices, "not ascending"),
    "signed indices": (_v1_signed_indices, "uint8, uint16 or uint32"),
    "a block missing": (_v1_drop_a_count, "unsigned counts"),
    "counts not summing up": (_v1_double_counts, "counts sum to"),
    "a count beyond its block": (_v1_wrap_the_count_sum, "exceeds the block size 256"),
    "counts shifted between blocks": (_v1_move_a_survivor_to_block_0, "not ascending"),
    "a part missing": (
        lambda t, m: t.pop("sparse_w.__counts__"),
        "missing from the file: sparse_w.__counts__",
    ),
    "a part undescribed": (
        lambda t, m: t.update({"x.__values__": np.zeros(1)}),
        "does not describe: x.__values__",
    ),
    "a part of another encoding": (
        lambda t, m: t.update({"dense_w.__indices__": np.zeros(1, np.uint8)}),
        "does not describe: dense_w.__indices__",
    ),
    "stored dense and sparse": (
        lambda t, m: t.update(dense_w=np.zeros(600, np.float32)),
        "does not describe: dense_w",
    ),
    "an entry for a part": (
        lambda t, m: m.update({"tensor:b.__bits__": m["tensor:dense_w"]}),
        "are reserved",
    ),
    "dense shape differs": (
        lambda t, m: entry_v1(m, "dense_w", shape=[20, 31]),
        "for 620 entries",
    ),
    "unknown encoding": (lambda t, m: entry_v1(m, "dense_w", encoding="rle"), "unknown encoding"),
    "unknown dtype": (lambda t, m: entry_v1(m, "dense_w", dtype="bfloat16"), "unknown dtype"),
    "negative dimension": (lambda t, m: entry_v1(m, "sparse_w", shape=[-1, 5]), "non-negative"),
    "boolean dimension": (lambda t, m: entry_v1(m, "dense_w", shape=[True]), "non-negative"),
    "metadata not JSON": (lambda t, m: m.update({"tensor:dense_w": "{"}), "not JSON"),
    "too many entries": (
        lambda t, m: entry_v1(m, "sparse_w", shape=[1 << 20, 1 << 20]),
        "at most",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_V1))
def test_malformed_version_1_files_are_refused(case: str, tmp_path: Path) -> None:
    tensors, metadata = valid_v1_file()
    path = tmp_path / "ok.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    st.load_sparse(path)  # the unchanged file loads

    spoil, message = MALFORMED_V1[case]
    spoil(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        st.load_sparse(path)


# ------------------------------------------------------------------------------------ a real run


DATA = "synthetic://?classes=4&shape=1,6,6&train=400&test=200&noise=1.5"


def test_a_run_writes_compact_copies_for_every_replicate(tmp_path: Path) -> None:
    from api_schemas.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden_sizes": [24, 16]},
            "dataset": {"uri": DATA, "validation_size": 80},
            "training": {"batch_size": 20, "steps": "40it", "eval_every": "20it", "lr": 0.005},
            "pruning": {"rounds": 2, "rates": {"linear": 0.5}, "controls": ["random_reinit"]},
            "replicates": 2,
            "seed": 5,
        }
    )
    run(spec, tmp_path, DataConfig(roots=(Path("/nonexistent"),)))
    names = {a["name"] for a in read_json(RunPaths(tmp_path).manifest)["artifacts"]}
    for r in (0, 1):
        paths = RunPaths(tmp_path).replicate(r)
        mask = load_tensors(paths.final_mask)
        for dense, sparse in [
            (paths.ticket, paths.ticket_sparse),
            (paths.final_trained, paths.trained_sparse),
        ]:
            assert sparse.relative_to(tmp_path).as_posix() in names
            with sparse.open("rb") as handle:  # the header's metadata says version 2
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            assert header["__metadata__"]["format_version"] == "2"
            state, sparse_mask = load_sparse_state(sparse)
            reference = load_tensors(dense)
            assert state.keys() == reference.keys()
            assert all(torch.equal(state[k], v) for k, v in reference.items())
            assert sparse_mask.keys() == mask.keys()
            assert all(torch.equal(sparse_mask[k], m) for k, m in mask.items())
    assert verify(tmp_path) == []

    for which in ("ticket", "trained"):
        dense_model = load_ticket(tmp_path, which).model.state_dict()
        compact = load_ticket(tmp_path, f"{which}.sparse")
        assert all(torch.equal(compact.model.state_dict()[k], v) for k, v in dense_model.items())
        assert compact.mask.keys() == load_tensors(RunPaths(tmp_path).final_mask).keys()
    with pytest.raises(ValueError, match="which must be one of"):
        load_ticket(tmp_path, "mask")
