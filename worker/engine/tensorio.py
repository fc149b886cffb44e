"""Atomic, pickle-free persistence: safetensors for tensors, JSON for everything else.

Every write goes to a temporary file in the same directory and is renamed into place, so a crash
leaves either the old file or the new one, never a torn one; the existence of a file therefore
proves its content is complete, which is what makes finished steps skippable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Save tensors (moved to CPU, made contiguous, un-aliased) with optional JSON metadata."""
    plain = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    meta = {"json": json.dumps(metadata)} if metadata is not None else None
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=meta)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    return load_file(str(path), device=str(device))


def load_metadata(path: Path) -> Any:
    """The JSON metadata stored by ``save_tensors`` (None when there is none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    return json.loads(meta["json"]) if "json" in meta else None


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
