"""The dataset layer: every URI kind, its errors, confinement to the data roots, and batches
that are a pure function of (seed, step)."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.numpy import save_file

from api_schemas.spec import DatasetSpec
from worker.engine.data import DataConfig, Dataset, load_dataset, resolve_path, synthetic
from worker.engine.data.augment import PAD, crop_and_flip
from worker.engine.data.device import Part, TensorDataset
from worker.engine.errors import DataError, SpecError

CPU = torch.device("cpu")
Arrays = dict[str, Any]  # name -> numpy array


def load(uri: str, root: Path, seed: int = 0, **spec: Any) -> Dataset:
    spec.setdefault("validation_size", 0)
    config = DataConfig(roots=(root,))
    return load_dataset(DatasetSpec(uri=uri, **spec), config, seed=seed, device=CPU)


def arrays(shape: tuple[int, ...], n_train: int = 40, n_test: int = 12, classes: int = 4) -> Arrays:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % classes,
    }


def indexed(n_train: int = 50, n_test: int = 10) -> Arrays:
    """Flat float data whose first feature is the example's index, to track examples."""
    x_train = np.zeros((n_train, 3), np.float32)
    x_train[:, 0] = np.arange(n_train)
    x_test = np.zeros((n_test, 3), np.float32)
    x_test[:, 0] = np.arange(n_test)
    return {
        "x_train": x_train,
        "y_train": np.arange(n_train) % 3,
        "x_test": x_test,
        "y_test": np.arange(n_test) % 3,
    }


def write_idx(path: Path, array: np.ndarray[Any, Any], *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def idx_dir(directory: Path, *, gz: bool = True) -> Path:
    directory.mkdir()
    data = arrays((28, 28), n_train=30, n_test=10, classes=10)
    for name, key in [
        ("train-images-idx3-ubyte", "x_train"),
        ("train-labels-idx1-ubyte", "y_train"),
        ("t10k-images-idx3-ubyte", "x_test"),
        ("t10k-labels-idx1-ubyte", "y_test"),
    ]:
        write_idx(directory / name, data[key], gz=gz)
    return directory


def write_png(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size[0] * size[1] * 3).reshape(size[1], size[0], 3) + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def image_folder(root: Path, size: tuple[int, int] = (10, 8)) -> Path:
    for split, count in (("train", 8), ("test", 2)):
        for label, name in enumerate(("cat", "dog", "emu")):
            for i in range(count):
                write_png(root / split / name / f"{i}.png", size, 40 * label + i)
    return root


# --- every URI kind -------------------------------------------------------------------------


def test_synthetic(tmp_path: Path) -> None:
    uri = "synthetic://?classes=4&shape=1,8,8&train=200&test=50&seed=3"
    data = load(uri, tmp_path, validation_size=20)
    assert (data.input_shape, data.num_classes) == ((1, 8, 8), 4)
    assert (data.train_size, data.validation_size, data.test_size) == (180, 20, 50)
    x, y = data.train_batches(32, seed=0).batch(0)
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    with pytest.raises(ValidationError, match="no parameter 'colors'"):  # refused in the spec
        load("synthetic://?colors=3", tmp_path)
    with pytest.raises(DataError, match="not numbers"):  # and by the engine itself
        synthetic.make("classes=abc")


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path: Path, gz: bool) -> None:
    data = load(f"idx://{idx_dir(tmp_path / 'mnist', gz=gz)}", tmp_path, validation_size=5)
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)
    assert (data.train_size, data.validation_size, data.test_size) == (25, 5, 10)


LAYOUTS = {
    "nchw": ((3, 8, 6), (3, 8, 6)),
    "nhwc": ((8, 6, 3), (3, 8, 6)),
    "nhwc_gray": ((8, 6, 1), (1, 8, 6)),
    "3d": ((8, 6), (1, 8, 6)),
    "2d": ((40,), (40,)),
}


def write_arrays(path: Path, data: Arrays) -> None:
    if path.suffix == ".npz":
        np.savez(path, **data)
    else:
        save_file(data, str(path))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["set.npz", "set.safetensors"])
def test_array_files(tmp_path: Path, name: str, layout: str) -> None:
    stored, expected = LAYOUTS[layout]
    write_arrays(tmp_path / name, arrays(stored))
    scheme = "npz" if name.endswith(".npz") else "safetensors"
    data = load(f"{scheme}://{tmp_path / name}", tmp_path, validation_size=10)
    assert (data.input_shape, data.num_classes) == (expected, 4)
    assert (data.train_size, data.validation_size, data.test_size) == (30, 10, 12)
    x, _ = next(data.eval_batches("test"))
    assert x.shape == (12, *expected)


def test_nhwc_is_transposed_not_reshaped(tmp_path: Path) -> None:
    data = arrays((8, 6, 3))
    np.savez(tmp_path / "set.npz", **data)
    loaded = load(f"npz://{tmp_path / 'set.npz'}", tmp_path, normalize=False)
    x, _ = next(loaded.eval_batches("test"))
    expected = torch.from_numpy(data["x_test"]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(x, expected)


def test_uploaded_dataset(tmp_path: Path) -> None:
    write_arrays(tmp_path / "blob", arrays((5,)))  # no suffix: the format is sniffed
    config = DataConfig(roots=(tmp_path,), uploads=lambda ident: tmp_path / ident)
    spec = DatasetSpec(uri="dataset://blob", validation_size=0)
    assert load_dataset(spec, config, seed=0, device=CPU).input_shape == (5,)
    with pytest.raises(DataError, match="need the service"):
        load_dataset(spec, DataConfig(roots=(tmp_path,)), seed=0, device=CPU)


def test_imagefolder(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    data = load(f"imagefolder://{root}", tmp_path, validation_size=4, augment=True)
    assert (data.input_shape, data.num_classes) == ((3, 8, 10), 3)
    assert (data.train_size, data.validation_size, data.test_size) == (20, 4, 6)
    batches = data.train_batches(6, seed=1)
    assert batches.iterations_per_epoch == 3
    steps = [batches.batch(s) for s in range(4)]
    assert all(x.shape == (6, 3, 8, 10) for x, _ in steps)
    again = load(f"imagefolder://{root}", tmp_path, validation_size=4, augment=True)
    x, y = again.train_batches(6, seed=1).batch(3)  # out of sequence: the loader restarts
    assert torch.equal(x, steps[3][0]) and torch.equal(y, steps[3][1])
    assert [len(y) for _, y in data.eval_batches("test", batch_size=4)] == [4, 2]

    def ids(x: torch.Tensor) -> list[int]:  # each image's first red pixel is unique
        return [round(float(v) * 255) for v in x[:, 0, 0, 0]]

    plain = load(f"imagefolder://{root}", tmp_path, validation_size=4, normalize=False)
    source = plain.train_batches(6, seed=1)
    epoch = [i for step in range(3) for i in ids(source.batch(step)[0])]
    validation = [i for x, _ in plain.eval_batches("validation") for i in ids(x)]
    assert len(set(epoch)) == 18 and len(validation) == 4 and not set(epoch) & set(validation)


def test_imagefolder_rejects_mixed_sizes_and_classes(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    write_png(root / "test" / "emu" / "0.png", (12, 8), 0)
    with pytest.raises(DataError, match=r"test/emu/0\.png.*same size"):
        load(f"imagefolder://{root}", tmp_path)
    write_png(root / "test" / "emu" / "0.png", (10, 8), 0)
    write_png(root / "test" / "fox" / "0.png", (10, 8), 0)
    with pytest.raises(DataError, match="test classes"):
        load(f"imagefolder://{root}", tmp_path)


def test_imagefolder_mismatch_found_while_streaming(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    write_png(root / "train" / "dog" / "7.png", (9, 9), 0)  # not the first of its class
    data = load(f"imagefolder://{root}", tmp_path, normalize=False)
    with pytest.raises(DataError, match=r"^\S*dog/7\.png: image has shape \(3, 9, 9\)"):
        data.train_batches(24, seed=0).batch(0)
    write_png(root / "test" / "emu" / "1.png", (9, 9), 0)
    with pytest.raises(DataError, match=r"^\S*test/emu/1\.png: image has shape"):
        list(data.eval_batches("test"))


def fashion_mnist_raw(source: Path, root: Path) -> Path:
    """torchvision 0.29's layout: <root>/FashionMNIST/raw/<decompressed IDX files>."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in source.glob("*-ubyte.gz"):
        with gzip.open(gz) as packed, (raw / gz.stem).open("wb") as out:
            shutil.copyfileobj(packed, out)
    return root


def test_torchvision_local_root(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    fashion_mnist_raw(fashion_mnist_dir, tmp_path / "torchvision")  # the default root
    data = load("torchvision://FashionMNIST", tmp_path, validation_size=5000)
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)
    assert (data.train_size, data.validation_size, data.test_size) == (55000, 5000, 10000)


def test_torchvision_absent_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load("torchvision://CIFAR10", tmp_path)
    assert str(tmp_path / "torchvision") in str(caught.value)
    assert "download=True" in str(caught.value)
    assert not (tmp_path / "torchvision").exists()


def test_real_fashion_mnist_idx(fashion_mnist_dir: Path) -> None:
    data = load(f"idx://{fashion_mnist_dir}", fashion_mnist_dir, validation_size=5000)
    assert (data.input_shape, data.num_classes) == ((1, 28, 28), 10)
    assert (data.train_size, data.validation_size, data.test_size) == (55000, 5000, 10000)
    x, _ = data.train_batches(55000, seed=0).batch(0)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    assert isinstance(data, TensorDataset)
    stored, _ = data.stored("train")
    assert stored.dtype == torch.uint8 and stored.shape == (55000, 1, 28, 28)
    assert stored.element_size() * stored.numel() == 55000 * 28 * 28  # 43 MB, not 172 MB


# --- corrupt data ---------------------------------------------------------------------------


def test_idx_corruption(tmp_path: Path) -> None:
    directory = idx_dir(tmp_path / "mnist", gz=False)
    uri = f"idx://{directory}"
    images = directory / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        load(uri, tmp_path)
    images.write_bytes(b"\x08\x00" + good[2:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        load(uri, tmp_path)
    images.write_bytes(gzip.compress(good)[:-20])  # a truncated gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load(uri, tmp_path)
    images.write_bytes(good)
    labels = directory / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(9, np.uint8), gz=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: 9 labels but"):
        load(uri, tmp_path)
    labels.unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load(uri, tmp_path)


class Tripwire:
    """Unpickling this touches a file, so a test can tell whether anything was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_npz_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    data: dict[str, Any] = arrays((4,))
    data["x_train"] = np.array([Tripwire(marker)] * 40, dtype=object)
    np.savez(tmp_path / "evil.npz", **data)
    with pytest.raises(DataError, match=r"evil\.npz"):
        load(f"npz://{tmp_path / 'evil.npz'}", tmp_path)
    assert not marker.exists()


def _with(data: Arrays, **changes: Any) -> Arrays:
    return {**data, **changes}


BAD_ARRAYS: dict[str, tuple[Arrays, str]] = {
    "missing key": ({k: v for k, v in arrays((4,)).items() if k != "y_test"}, "missing.*y_test"),
    "length mismatch": (_with(arrays((4,)), y_train=np.zeros(39, np.int64)), "39 labels"),
    "negative label": (_with(arrays((4,)), y_test=-np.ones(12, np.int64)), "negative label"),
    "float labels": (_with(arrays((4,)), y_train=np.full(40, 0.5)), "must be integers"),
    "nan": (_with(arrays((4,)), x_test=np.full((12, 4), np.nan, np.float32)), "NaN"),
    "wrong ndim": (_with(arrays((4,)), x_train=np.zeros((40, 1, 2, 2, 2), np.uint8)), "shape"),
    "test shape": (_with(arrays((4,)), x_test=np.zeros((12, 5), np.uint8)), "test examples"),
    "int features": (_with(arrays((4,)), x_train=np.zeros((40, 4), np.int64)), "uint8 or float"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
@pytest.mark.parametrize("name", ["bad.npz", "bad.safetensors"])
def test_bad_arrays(tmp_path: Path, name: str, case: str) -> None:
    data, message = BAD_ARRAYS[case]
    write_arrays(tmp_path / name, data)
    scheme = name.rsplit(".", 1)[1]
    with pytest.raises(DataError, match=f"{re.escape(name)}.*{message}"):
        load(f"{scheme}://{tmp_path / name}", tmp_path)


@pytest.mark.parametrize("name", ["junk.npz", "junk.safetensors"])
def test_garbage_files(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    scheme = name.rsplit(".", 1)[1]
    with pytest.raises(DataError, match=re.escape(name)):
        load(f"{scheme}://{tmp_path / name}", tmp_path)


def test_validation_larger_than_train(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", **arrays((4,)))
    with pytest.raises(DataError, match=r"validation_size 40 .* 40 examples"):
        load(f"npz://{tmp_path / 'set.npz'}", tmp_path, validation_size=40)
    data = load(f"npz://{tmp_path / 'set.npz'}", tmp_path, validation_size=30)
    with pytest.raises(SpecError, match="batch_size 11"):
        data.train_batches(11, seed=0)


# --- confinement to the data roots ----------------------------------------------------------


def test_paths_are_confined_to_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    np.savez(outside / "set.npz", **arrays((4,)))
    with pytest.raises(DataError, match="outside the data roots"):
        load(f"npz://{outside / 'set.npz'}", root)
    with pytest.raises(DataError, match="outside the data roots"):
        load(f"npz://{root}/../outside/set.npz", root)
    (root / "link.npz").symlink_to(outside / "set.npz")
    with pytest.raises(DataError, match="outside the data roots"):
        load(f"npz://{root / 'link.npz'}", root)
    with pytest.raises(DataError, match="three slashes"):
        load("npz://set.npz", root)
    with pytest.raises(DataError, match="does not exist"):
        load(f"npz://{root / 'nothing.npz'}", root)
    with pytest.raises(DataError, match="must be absolute"):
        resolve_path("set.npz", [root])


def test_symlinked_file_inside_a_directory_is_confined(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    idx_dir(outside)
    directory = root / "mnist"
    directory.mkdir()
    for path in outside.iterdir():
        (directory / path.name).symlink_to(path)
    with pytest.raises(DataError, match="outside the data roots"):
        load(f"idx://{directory}", root)
    image_folder(root / "pets")
    (root / "pets" / "train" / "cat" / "x.png").symlink_to(root.parent / "secret.png")
    write_png(root.parent / "secret.png", (10, 8), 0)
    with pytest.raises(DataError, match="outside the data roots"):
        load(f"imagefolder://{root / 'pets'}", root)


# --- batches ---------------------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_step(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", **indexed())
    uri = f"npz://{tmp_path / 'set.npz'}"
    first = load(uri, tmp_path, normalize=False, validation_size=5).train_batches(8, seed=4)
    second = load(uri, tmp_path, normalize=False, validation_size=5).train_batches(8, seed=4)
    assert first.iterations_per_epoch == 5  # 45 // 8
    sequential = [first.batch(step) for step in range(15)]
    for step in (12, 3, 7, 0, 14):  # any order, on a fresh source
        x, y = second.batch(step)
        assert torch.equal(x, sequential[step][0]) and torch.equal(y, sequential[step][1])

    def epoch(e: int) -> list[int]:
        ids = torch.cat([sequential[5 * e + i][0][:, 0] for i in range(5)])
        return [int(i) for i in ids]

    for e in range(3):
        assert len(set(epoch(e))) == 40  # every batch full, no example twice
    assert epoch(0) != epoch(1) != epoch(2)
    other = load(uri, tmp_path, normalize=False, validation_size=5).train_batches(8, seed=5)
    assert not torch.equal(other.batch(0)[0], sequential[0][0])


def test_holdout_is_disjoint_and_eval_is_in_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", **indexed())
    data = load(f"npz://{tmp_path / 'set.npz'}", tmp_path, normalize=False, validation_size=10)
    train = {int(i) for i in data.train_batches(40, seed=0).batch(0)[0][:, 0]}
    validation = [int(i) for x, _ in data.eval_batches("validation", 3) for i in x[:, 0]]
    assert len(train) == 40 and len(validation) == 10 and not train & set(validation)
    assert train | set(validation) == set(range(50))
    test = [int(i) for x, _ in data.eval_batches("test", 4) for i in x[:, 0]]
    assert test == list(range(10))
    same = load(f"npz://{tmp_path / 'set.npz'}", tmp_path, normalize=False, validation_size=10)
    assert [int(i) for x, _ in same.eval_batches("validation") for i in x[:, 0]] == validation


def test_augmentation(tmp_path: Path) -> None:
    uri = "synthetic://?shape=3,12,12&train=64&test=8"
    plain = load(uri, tmp_path).train_batches(16, seed=2)
    augmented = load(uri, tmp_path, augment=True).train_batches(16, seed=2)
    again = load(uri, tmp_path, augment=True).train_batches(16, seed=2)
    x, y = augmented.batch(5)
    assert x.shape == (16, 3, 12, 12) and torch.equal(y, plain.batch(5)[1])
    assert not torch.equal(x, plain.batch(5)[0])
    assert torch.equal(x, again.batch(5)[0])
    assert not torch.equal(augmented.batch(1)[0], augmented.batch(5 + 4)[0])
    x_eval, _ = next(load(uri, tmp_path, augment=True).eval_batches("test"))
    assert torch.equal(x_eval, next(load(uri, tmp_path).eval_batches("test"))[0])
    with pytest.raises(DataError, match="augment needs image"):
        load("synthetic://?shape=40", tmp_path, augment=True)


def test_crop_and_flip_takes_windows_of_the_padded_image() -> None:
    x = torch.rand(32, 2, 5, 7)
    out = crop_and_flip(x, torch.Generator().manual_seed(0), fill=torch.tensor(-1.0))
    padded = torch.nn.functional.pad(x, (PAD,) * 4, value=-1.0)
    flipped = 0
    for image, source in zip(out, padded, strict=True):
        windows = [
            window
            for dy in range(2 * PAD + 1)
            for dx in range(2 * PAD + 1)
            for window in (source[:, dy : dy + 5, dx : dx + 7],)
        ]
        if any(torch.equal(image, w) for w in windows):
            continue
        assert any(torch.equal(image, w.flip(-1)) for w in windows)
        flipped += 1
    assert 4 < flipped < 28


def test_normalization(tmp_path: Path) -> None:
    uri = "synthetic://?shape=3,6,6&train=300&test=50"
    data = load(uri, tmp_path, validation_size=50)
    x, _ = data.train_batches(250, seed=0).batch(0)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4)
    raw, _ = load(uri, tmp_path, validation_size=50, normalize=False).train_batches(250, 0).batch(0)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1
    flat, _ = load("synthetic://?shape=20", tmp_path).train_batches(2000, 0).batch(0)
    assert abs(float(flat.mean())) < 1e-5 and abs(float(flat.std(unbiased=False)) - 1) < 1e-4


def test_fingerprint_identifies_content_and_recipe(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", **arrays((4,)))
    np.savez(tmp_path / "b.npz", **arrays((4,)))
    np.savez(tmp_path / "c.npz", **_with(arrays((4,)), y_test=np.zeros(12, np.int64)))
    a = load(f"npz://{tmp_path / 'a.npz'}", tmp_path).fingerprint
    assert a == load(f"npz://{tmp_path / 'b.npz'}", tmp_path).fingerprint
    assert a != load(f"npz://{tmp_path / 'c.npz'}", tmp_path).fingerprint
    assert a != load(f"npz://{tmp_path / 'a.npz'}", tmp_path, validation_size=5).fingerprint
    assert a != load(f"npz://{tmp_path / 'a.npz'}", tmp_path, normalize=False).fingerprint
    assert len(a) == 64


def test_host_resident_path_matches_device_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data too large for the device stays on the host as uint8 and gives the same batches."""
    np.savez(tmp_path / "set.npz", **arrays((3, 8, 8)))
    uri = f"npz://{tmp_path / 'set.npz'}"
    on_device = load(uri, tmp_path, validation_size=8, augment=True)
    monkeypatch.setattr("worker.engine.data.device.DEVICE_RESIDENT_BYTES", 0)
    on_host = load(uri, tmp_path, validation_size=8, augment=True)
    assert isinstance(on_host, TensorDataset) and isinstance(on_device, TensorDataset)
    assert not on_host.resident and on_device.resident
    for step in (0, 9):
        x_host, y_host = on_host.train_batches(5, seed=1).batch(step)
        x_device, y_device = on_device.train_batches(5, seed=1).batch(step)
        assert torch.allclose(x_host, x_device) and torch.equal(y_host, y_device)
    for split in ("validation", "test"):
        for (xh, yh), (xd, yd) in zip(
            on_host.eval_batches(split, 5), on_device.eval_batches(split, 5), strict=True
        ):
            assert torch.allclose(xh, xd) and torch.equal(yh, yd)


def tensor_dataset(uri: str, root: Path, **spec: Any) -> TensorDataset:
    data = load(uri, root, **spec)
    assert isinstance(data, TensorDataset)
    return data


def test_idx_splits_stay_uint8(tmp_path: Path) -> None:
    """Pixels are held as stored, one byte each, and only batches are float32."""
    uri = f"idx://{idx_dir(tmp_path / 'mnist')}"
    data = tensor_dataset(uri, tmp_path, validation_size=5)
    assert data.resident
    parts: list[tuple[Part, int]] = [("train", 25), ("validation", 5), ("test", 10)]
    for split, count in parts:
        x, y = data.stored(split)
        assert x.dtype == torch.uint8 and x.shape == (count, 1, 28, 28)
        assert x.element_size() * x.numel() == count * 28 * 28
        assert y.dtype == torch.int64
    assert data.train_batches(5, seed=0).batch(0)[0].dtype == torch.float32
    assert next(data.eval_batches("test"))[0].dtype == torch.float32


def test_residency_counts_stored_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uint8 data four times over the limit as float32 still fits if its stored bytes do."""
    np.savez(tmp_path / "set.npz", **arrays((3, 8, 8)))
    uri = f"npz://{tmp_path / 'set.npz'}"
    stored = 52 * 3 * 8 * 8 + 52 * 8  # uint8 examples and int64 labels of 40 + 12
    monkeypatch.setattr("worker.engine.data.device.DEVICE_RESIDENT_BYTES", stored)
    assert tensor_dataset(uri, tmp_path).resident
    monkeypatch.setattr("worker.engine.data.device.DEVICE_RESIDENT_BYTES", stored - 1)
    assert not tensor_dataset(uri, tmp_path).resident


def test_eval_chunks_are_the_float32_preprocessing_of_the_raw_examples(tmp_path: Path) -> None:
    raw = arrays((3, 8, 8))
    np.savez(tmp_path / "set.npz", **raw)
    data = tensor_dataset(f"npz://{tmp_path / 'set.npz'}", tmp_path)
    unit_train = torch.from_numpy(raw["x_train"]).double() / 255
    mean = unit_train.mean(dim=(0, 2, 3), keepdim=True).float()
    std = unit_train.std(dim=(0, 2, 3), keepdim=True, unbiased=False).float()
    expected = (torch.from_numpy(raw["x_test"]).float() / 255 - mean) / std
    chunks = [x for x, _ in data.eval_batches("test", batch_size=5)]
    assert [len(x) for x in chunks] == [5, 5, 2]
    assert torch.allclose(torch.cat(chunks), expected, rtol=0, atol=1e-6)
    assert data.stored("test")[0].dtype == torch.uint8  # scaled copies, the split untouched
    assert torch.equal(data.stored("test")[0], torch.from_numpy(raw["x_test"]))


@pytest.mark.parametrize("augment", [False, True])
def test_uint8_batches_equal_a_float32_source_of_the_same_pixels(
    tmp_path: Path, augment: bool
) -> None:
    """The same examples stored as uint8 and pre-scaled float32 give bit-identical batches."""
    raw = arrays((3, 8, 8), n_train=60)
    scaled: Arrays = {
        key: torch.from_numpy(value).float().div(255).numpy() if key[0] == "x" else value
        for key, value in raw.items()
    }
    np.savez(tmp_path / "bytes.npz", **raw)
    np.savez(tmp_path / "floats.npz", **scaled)
    spec: dict[str, Any] = {"validation_size": 10, "augment": augment}
    pixels = tensor_dataset(f"npz://{tmp_path / 'bytes.npz'}", tmp_path, **spec)
    floats = tensor_dataset(f"npz://{tmp_path / 'floats.npz'}", tmp_path, **spec)
    assert pixels.stored("train")[0].dtype == torch.uint8
    assert floats.stored("train")[0].dtype == torch.float32
    from_pixels = pixels.train_batches(8, seed=3)
    from_floats = floats.train_batches(8, seed=3)
    for step in (0, 4, 6, 13):  # across an epoch boundary (6 batches an epoch)
        x, y = from_pixels.batch(step)
        x_float, y_float = from_floats.batch(step)
        assert x.dtype == torch.float32 and torch.equal(x, x_float) and torch.equal(y, y_float)
    assert not torch.equal(from_pixels.batch(0)[0], from_pixels.batch(6)[0])
    for split in ("validation", "test"):
        for (x, y), (x_float, y_float) in zip(
            pixels.eval_batches(split, 4), floats.eval_batches(split, 4), strict=True
        ):
            assert torch.equal(x, x_float) and torch.equal(y, y_float)
    assert torch.equal(floats.stored("test")[0], torch.from_numpy(scaled["x_test"]))


def test_float64_source_stays_float64(tmp_path: Path) -> None:
    data = indexed()
    data = _with(
        data,
        x_train=data["x_train"].astype(np.float64),
        x_test=data["x_test"].astype(np.float64) / 2,
    )
    np.savez(tmp_path / "set.npz", **data)
    loaded = tensor_dataset(f"npz://{tmp_path / 'set.npz'}", tmp_path, validation_size=10)
    assert loaded.stored("train")[0].dtype == loaded.stored("test")[0].dtype == torch.float64
    x, _ = loaded.train_batches(40, seed=0).batch(0)
    assert x.dtype == torch.float32 and x.shape == (40, 3) and abs(float(x.mean())) < 1e-5
    x_test, _ = next(loaded.eval_batches("test"))
    assert x_test.dtype == torch.float32 and x_test.shape == (10, 3)
