"""``load_dataset``: from a URI to a ready Dataset, through a registry of readers per scheme."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import torch

from api_schemas.spec import DatasetSpec
from worker.engine.data import synthetic, torchvision_sets
from worker.engine.data.api import DataConfig, Dataset
from worker.engine.data.arrays import RawArrays, check, read_npz, read_safetensors
from worker.engine.data.device import TensorDataset
from worker.engine.data.idx import read_idx_dir
from worker.engine.data.imagefolder import ImageFolderDataset
from worker.engine.data.uris import resolve_path, uri_path
from worker.engine.errors import DataError

ArrayReader = Callable[[SplitResult, DataConfig], RawArrays]
StreamLoader = Callable[[SplitResult, DatasetSpec, DataConfig, int, torch.device], Dataset]
_ZIP_MAGIC = b"PK\x03\x04"


def _confined(uri: SplitResult, config: DataConfig, *, directory: bool) -> Path:
    # The upload area is reached only as dataset://<id>, which checks the owner.
    path = resolve_path(uri_path(uri), config.roots, config.excluded)
    if path.is_dir() != directory:
        kind = "a directory" if directory else "a file"
        raise DataError(f"{path}: {uri.scheme}:// needs {kind}")
    return path


def _idx(uri: SplitResult, config: DataConfig) -> RawArrays:
    return read_idx_dir(_confined(uri, config, directory=True), config.roots)


def _npz(uri: SplitResult, config: DataConfig) -> RawArrays:
    return read_npz(_confined(uri, config, directory=False))


def _safetensors(uri: SplitResult, config: DataConfig) -> RawArrays:
    return read_safetensors(_confined(uri, config, directory=False))


def _synthetic(uri: SplitResult, config: DataConfig) -> RawArrays:
    if uri.netloc or uri.path.strip("/"):
        raise DataError(f"{uri.geturl()!r}: write synthetic://?classes=10&shape=1,28,28&...")
    return synthetic.make(uri.query)


def _torchvision(uri: SplitResult, config: DataConfig) -> RawArrays:
    root = config.torchvision_root
    if root is None:
        if not config.roots:
            raise DataError(f"{uri.geturl()}: this worker has no data root for torchvision data")
        root = config.roots[0] / "torchvision"
    name = torchvision_sets.name_of(uri.netloc, uri.path)
    return torchvision_sets.read(name, root, config.download)


def _upload(uri: SplitResult, config: DataConfig) -> RawArrays:
    if config.uploads is None:
        raise DataError(f"{uri.geturl()}: uploaded datasets need the service")
    path = config.uploads(uri.netloc or uri.path.strip("/"))
    try:
        with path.open("rb") as handle:
            zipped = handle.read(4) == _ZIP_MAGIC
    except OSError as error:
        message = f"{path}: uploaded dataset {uri.geturl()} is unreadable ({error})"
        raise DataError(message) from error
    return read_npz(path) if zipped else read_safetensors(path)


def _imagefolder(
    uri: SplitResult, spec: DatasetSpec, config: DataConfig, seed: int, device: torch.device
) -> Dataset:
    directory = _confined(uri, config, directory=True)
    return ImageFolderDataset(directory, config.roots, spec, seed, device)


#: Schemes whose data is read whole into memory, as four arrays.
ARRAY_READERS: dict[str, ArrayReader] = {
    "torchvision": _torchvision,
    "idx": _idx,
    "npz": _npz,
    "safetensors": _safetensors,
    "synthetic": _synthetic,
    "dataset": _upload,
}

#: Schemes streamed from disk batch by batch.
STREAMED: dict[str, StreamLoader] = {"imagefolder": _imagefolder}


def load_dataset(
    spec: DatasetSpec, config: DataConfig, *, seed: int, device: torch.device
) -> Dataset:
    """The dataset ``spec.uri`` names, split (hold-out chosen by ``seed``) and ready on ``device``.

    Anything wrong with the data or the URI raises DataError with a message for the user.
    """
    uri = urlsplit(spec.uri)
    if uri.scheme in STREAMED:
        return STREAMED[uri.scheme](uri, spec, config, seed, device)
    if uri.scheme not in ARRAY_READERS:
        schemes = ", ".join(f"{s}://" for s in [*ARRAY_READERS, *STREAMED])
        raise DataError(f"unknown dataset scheme in {spec.uri!r}; use one of {schemes}")
    raw = ARRAY_READERS[uri.scheme](uri, config)
    return TensorDataset(check(raw), spec, seed, device, raw.digest())
