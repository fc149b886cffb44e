"""Compact state-dict files: exact round trips, the encodings chosen, the sizes reached on a real
LeNet-300-100, malformed files refused, and the files a real run writes beside its dense ones."""

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
from safetensors.numpy import save_file
from safetensors.torch import save_file as torch_save_file

from api_schemas import sparse_tensors as st
from api_schemas.spec import LayerRates, ModelSpec
from worker.engine.artifacts import load_sparse_state, load_ticket, save_sparse_state, verify
from worker.engine.data import DataConfig
from worker.engine.imp import run
from worker.engine.masks import apply_mask, dense_mask, density, prunable_layers
from worker.engine.models import build_model, count_parameters
from worker.engine.paths import RunPaths
from worker.engine.pruning import prune_to_density
from worker.engine.tensorio import load_tensors, read_json, save_tensors

Arrays = dict[str, npt.NDArray[Any]]


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


@pytest.mark.parametrize("keep", [0.0, 0.0005, 0.01, 0.036, 0.107, 0.168, 0.51, 1.0])
def test_round_trip_is_bit_identical_at_every_density(keep: float, tmp_path: Path) -> None:
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

    path = tmp_path / "state.sparse.safetensors"
    st.save_sparse(path, tensors, masks)
    state, got_masks = st.load_sparse(path)
    assert_identical(state, tensors)
    assert_identical(got_masks, masks)
    for name, mask in masks.items():
        assert not state[name][~mask].any(), "pruned entries are exactly zero"
    assert st.decode(*st.encode(tensors, masks)).keys() == tensors.keys()


def encodings(tensors: Arrays, masks: Arrays) -> dict[str, str]:
    """Each tensor's encoding; a tensor without an entry is stored as it is."""
    encoded, metadata = st.encode(tensors, masks)
    kinds = {}
    for name in tensors:
        entry = metadata.get(f"tensor:{name}")
        kinds[name] = "dense" if entry is None else json.loads(entry)["encoding"]
        assert (entry is None) == (name in encoded)
    return kinds


def test_the_smaller_encoding_is_chosen_per_tensor() -> None:
    rng = np.random.default_rng(1)
    tensors: Arrays = {"bias": np.ones(4, np.float32)}
    masks: Arrays = {}
    for name, keep in [("none", 0.0), ("sparse", 0.03), ("half", 0.5), ("full", 1.0)]:
        tensors[name], masks[name] = sparse_tensor(rng, (300, 784), keep)
    assert encodings(tensors, masks) == {
        "bias": "dense",
        "none": "indices",
        "sparse": "indices",
        "half": "bits",
        "full": "bits",
    }
    encoded, _ = st.encode(tensors, masks)
    assert encoded["half.__bits__"].nbytes == math.ceil(300 * 784 / 8)
    # Below 1/128 of the entries, 16-bit positions in blocks of 65,536 beat 8-bit ones.
    very, very_mask = sparse_tensor(rng, (300, 784), 0.002)
    tiny = st.encode({"w": very}, {"w": very_mask})[0]
    assert tiny["w.__indices__"].dtype == np.uint16 and tiny["w.__counts__"].size == 4
    assert encoded["sparse.__indices__"].dtype == np.uint8
    small = st.encode({"w": np.zeros(100, np.float32)}, {"w": np.zeros(100, bool)})[0]
    assert small["w.__counts__"].size == 1  # one block: plain flat indices


def pruned_lenet(keep: float, strategy: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """LeNet-300-100's initial state dict magnitude-pruned to ``keep`` of its weights."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="lenet_300_100"), (1, 28, 28), 10)
    assert count_parameters(model) == 266_610
    state = model.state_dict()
    layers = prunable_layers(model)
    mask = prune_to_density(
        state, dense_mask(model), layers, keep, strategy=strategy, rates=LayerRates()
    )
    assert density(mask) == pytest.approx(keep, abs=1e-4)
    return apply_mask(state, mask), mask


@pytest.mark.parametrize("strategy", ["layerwise", "global"])
@pytest.mark.parametrize(("keep", "limit"), [(0.10, 0.15), (0.036, 0.06)])
def test_lenet_compact_file_sizes(strategy: str, keep: float, limit: float, tmp_path: Path) -> None:
    state, mask = pruned_lenet(keep, strategy)
    dense, sparse = tmp_path / "ticket.safetensors", tmp_path / "ticket.sparse.safetensors"
    save_tensors(dense, state)
    save_sparse_state(sparse, state, mask)
    ratio = sparse.stat().st_size / dense.stat().st_size
    assert ratio <= limit, f"{ratio:.2%} of the dense file at {keep:.1%} density"

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
    with pytest.raises(ValueError, match="are reserved"):
        st.encode({"w": weight * keep, "w.__values__": np.zeros(1, np.float32)}, {"w": keep})


def valid_file() -> tuple[Arrays, dict[str, str]]:
    rng = np.random.default_rng(2)
    tensors: Arrays = {"b": np.ones(3, np.float32)}
    masks: Arrays = {}
    tensors["dense_w"], masks["dense_w"] = sparse_tensor(rng, (20, 30), 0.5)
    tensors["sparse_w"], masks["sparse_w"] = sparse_tensor(rng, (300, 400), 0.02)
    encoded, metadata = st.encode(tensors, masks)
    assert encodings(tensors, masks) == {"b": "dense", "dense_w": "bits", "sparse_w": "indices"}
    return encoded, metadata


def entry(metadata: dict[str, str], name: str, **changes: Any) -> None:
    metadata[f"tensor:{name}"] = json.dumps(json.loads(metadata[f"tensor:{name}"]) | changes)


def _set_padding(t: Arrays, m: dict[str, str]) -> None:
    entry(m, "dense_w", shape=[599])  # still 75 bytes, but the last bit is now padding
    t["dense_w.__bits__"][-1] |= 0x80


def _swap_first_indices(t: Arrays, m: dict[str, str]) -> None:
    indices = t["sparse_w.__indices__"]
    assert t["sparse_w.__counts__"][0] >= 2
    indices[0], indices[1] = indices[1], indices[0]


def _drop_a_count(t: Arrays, m: dict[str, str]) -> None:
    t["sparse_w.__counts__"] = t["sparse_w.__counts__"][:-1]


def _double_counts(t: Arrays, m: dict[str, str]) -> None:
    t["sparse_w.__counts__"] = t["sparse_w.__counts__"] * 2


def _move_a_survivor_to_block_0(t: Arrays, m: dict[str, str]) -> None:
    counts, indices = t["sparse_w.__counts__"], t["sparse_w.__indices__"]
    assert counts[1] > 0 and indices[counts[0]] < indices[counts[0] - 1]
    counts[0] += 1
    counts[1] -= 1


def _wrap_the_count_sum(t: Arrays, m: dict[str, str]) -> None:
    counts = t["sparse_w.__counts__"].astype(np.uint64)
    counts[:2] += np.uint64(1 << 63)  # the sum wraps around to the right total
    assert int(counts.sum(dtype=np.uint64)) == t["sparse_w.__indices__"].size
    t["sparse_w.__counts__"] = counts


def _index_past_the_end(t: Arrays, m: dict[str, str]) -> None:
    # 120,000 entries: 468 full blocks of 256 positions and a last one of 192.
    counts, indices = t["sparse_w.__counts__"], t["sparse_w.__indices__"]
    assert counts.size == 469 and counts[-1] > 0 and indices[-2] < 250
    indices[-1] = 250


def _signed_indices(t: Arrays, m: dict[str, str]) -> None:
    t["sparse_w.__indices__"] = t["sparse_w.__indices__"].astype(np.int32)


def _bits_too_short(t: Arrays, m: dict[str, str]) -> None:
    t["dense_w.__bits__"] = t["dense_w.__bits__"][:-1]


def _a_value_too_few(t: Arrays, m: dict[str, str]) -> None:
    t["dense_w.__values__"] = t["dense_w.__values__"][:-1]


def _values_in_float64(t: Arrays, m: dict[str, str]) -> None:
    t["dense_w.__values__"] = t["dense_w.__values__"].astype(np.float64)


MALFORMED: dict[str, tuple[Callable[[Arrays, dict[str, str]], object], str]] = {
    "unknown version": (lambda t, m: m.update(format_version="2"), "unknown lth-sparse format"),
    "another format": (lambda t, m: m.update(format="npz"), "not a compact state dict"),
    "bits too short": (_bits_too_short, "bytes for 600 entries"),
    "padding bits set": (_set_padding, "padding bits"),
    "a value too few": (_a_value_too_few, "values for"),
    "values of another dtype": (_values_in_float64, "expected float32"),
    "indices out of range": (_index_past_the_end, "not below 120000"),
    "indices not ascending": (_swap_first_indices, "not ascending"),
    "signed indices": (_signed_indices, "uint8, uint16 or uint32"),
    "a block missing": (_drop_a_count, "unsigned counts"),
    "counts not summing up": (_double_counts, "counts sum to"),
    "a count beyond its block": (_wrap_the_count_sum, "exceeds the block size 256"),
    "counts shifted between blocks": (_move_a_survivor_to_block_0, "not ascending"),
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
    "dense shape differs": (lambda t, m: entry(m, "dense_w", shape=[20, 31]), "for 620 entries"),
    "unknown encoding": (lambda t, m: entry(m, "dense_w", encoding="rle"), "unknown encoding"),
    "unknown dtype": (lambda t, m: entry(m, "dense_w", dtype="bfloat16"), "unknown dtype"),
    "negative dimension": (lambda t, m: entry(m, "sparse_w", shape=[-1, 5]), "non-negative"),
    "boolean dimension": (lambda t, m: entry(m, "dense_w", shape=[True]), "non-negative"),
    "metadata not JSON": (lambda t, m: m.update({"tensor:dense_w": "{"}), "not JSON"),
    "too many entries": (lambda t, m: entry(m, "sparse_w", shape=[1 << 20, 1 << 20]), "at most"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_refused(case: str, tmp_path: Path) -> None:
    tensors, metadata = valid_file()
    path = tmp_path / "ok.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    st.load_sparse(path)  # the unchanged file loads

    spoil, message = MALFORMED[case]
    spoil(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        st.load_sparse(path)


def test_files_of_other_kinds_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        st.load_sparse(garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(ValueError, match="not a compact state dict"):
        st.load_sparse(plain)
    halves = tmp_path / "bf16.safetensors"
    torch_save_file(
        {"w": torch.zeros(3, dtype=torch.bfloat16)},
        str(halves),
        metadata={"format": "lth-sparse", "format_version": "1"},
    )
    with pytest.raises(ValueError, match="bfloat16"):  # numpy has no bfloat16 of its own
        st.load_sparse(halves)
    with pytest.raises(ValueError, match="at most 10 may load"):
        st.decode(*valid_file(), max_elements=10)


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
