"""How many training examples a dataset URI names, when that is cheap to know at submission.

With the size, lengths written in epochs become iterations and impossible combinations (a rewind
point past the end, a hold-out as large as the training set, a batch larger than what is left)
are refused with a 422 instead of failing later in a worker. Unknown (None) means "let the
worker check".
"""

from __future__ import annotations

import gzip
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from api_schemas.synthetic import parse_synthetic
from service.dataset_files import InvalidDatasetError, read_headers
from store.datasets import dataset_id_from_uri, get_dataset
from store.tables import Tenant

#: Training-split sizes of the torchvision datasets the engine reads.
TORCHVISION_TRAIN_SIZES = {
    "MNIST": 60_000,
    "FashionMNIST": 60_000,
    "KMNIST": 60_000,
    "CIFAR10": 50_000,
    "CIFAR100": 50_000,
    "SVHN": 73_257,
}
IDX_LABELS = "train-labels-idx1-ubyte"


def _idx_count(directory: Path) -> int | None:
    """The example count in the IDX label file's header (8 bytes; gzipped or not)."""
    for path, opener in (
        (directory / f"{IDX_LABELS}.gz", gzip.open),
        (directory / IDX_LABELS, open),
    ):
        if path.is_file():
            try:
                with opener(path, "rb") as handle:
                    header = handle.read(8)
            except OSError:
                return None
            return int.from_bytes(header[4:8], "big") if len(header) == 8 else None
    return None


def train_size(uri: str, session: Session, tenant: Tenant) -> int | None:
    """Training examples behind ``uri`` (before any hold-out), or None when not cheaply known.
    Call only after the URI passed the data-root checks."""
    parts = urlsplit(uri)
    try:
        if parts.scheme == "synthetic":
            return parse_synthetic(parts.query).train
        if parts.scheme == "torchvision":
            return TORCHVISION_TRAIN_SIZES.get(parts.netloc or parts.path.strip("/"))
        if parts.scheme == "dataset":
            dataset_id = dataset_id_from_uri(uri)
            row = get_dataset(session, tenant.id, dataset_id) if dataset_id else None
            size = row.meta.get("train_size") if row is not None else None
            return int(size) if isinstance(size, int) else None
        path = Path(unquote(parts.path))
        if parts.scheme == "idx":
            return _idx_count(path)
        if parts.scheme in ("npz", "safetensors") and path.is_file():
            shape = read_headers(path, parts.scheme)["x_train"].shape
            return shape[0] if shape else None
    except (ValueError, OSError, InvalidDatasetError):
        return None
    return None
