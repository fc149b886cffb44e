"""Turning dataset URIs into paths the worker is allowed to read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import SplitResult, unquote

from worker.engine.errors import DataError


def resolve_path(uri_path: str, roots: Sequence[Path]) -> Path:
    """The real path of ``uri_path`` if it lies inside one of ``roots``, else a DataError.

    Symlinks and ``..`` are resolved before the check, so neither can lead out of the roots. A
    path outside the roots is refused before its existence is tested, so a spec cannot probe the
    worker's file system.
    """
    if not uri_path.startswith("/"):
        raise DataError(f"dataset path {uri_path!r} must be absolute, e.g. npz:///data/set.npz")
    if "\x00" in uri_path:
        raise DataError(f"dataset path {uri_path!r} contains a NUL byte")
    if not roots:
        raise DataError(f"dataset path {uri_path} cannot be read: this worker has no data roots")
    resolved = Path(uri_path).resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise DataError(f"dataset path {uri_path} is outside the data roots ({allowed})")
    if not resolved.exists():
        raise DataError(f"dataset path {uri_path} does not exist")
    return resolved


def uri_path(uri: SplitResult) -> str:
    """The path of a file-based URI (``scheme:///abs/path``); a host or query is a typo."""
    if uri.netloc or uri.query or uri.fragment:
        raise DataError(
            f"dataset URI {uri.geturl()!r} must be {uri.scheme}:///absolute/path "
            "(three slashes, no host, no query)"
        )
    return unquote(uri.path)
