"""Turning dataset URIs and ``model.weights`` into paths the worker is allowed to read.

The rule is :mod:`api_schemas.confine`, the one the service applied at submission; here its
refusals become DataErrors and the file must also exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import SplitResult, unquote

from api_schemas.confine import PathRefusedError, confine, confine_path
from worker.engine.errors import DataError


def _existing(path: Path, named: str) -> Path:
    if not path.exists():
        raise DataError(f"{named} does not exist")
    return path


def resolve_path(uri_path: str, roots: Sequence[Path], excluded: Sequence[Path] = ()) -> Path:
    """The real path of ``uri_path`` if it lies inside one of ``roots`` and none of
    ``excluded``, else a DataError.

    ``uri_path`` is a path already (taken from a parsed URI or found in a dataset directory),
    so its characters are literal. Symlinks and ``..`` are resolved before the check, so neither
    can lead out of the roots; a path outside them is refused before its existence is tested,
    so a spec cannot probe the worker's file system.
    """
    try:
        resolved = confine_path(uri_path, roots, excluded)
    except PathRefusedError as error:
        raise DataError(f"dataset path: {error}") from error
    return _existing(resolved, f"dataset path {uri_path}")


def resolve_location(
    location: str, roots: Sequence[Path], excluded: Sequence[Path] = (), *, field: str
) -> Path:
    """The real path of ``location`` (a spec's absolute path or ``file://`` URI, named by the
    spec ``field``), parsed and confined exactly as at submission; it must exist."""
    try:
        resolved = confine(location, roots, excluded)
    except PathRefusedError as error:
        raise DataError(f"{field}: {error}") from error
    return _existing(resolved, f"{field} {location}")


def uri_path(uri: SplitResult) -> str:
    """The path of a file-based URI (``scheme:///abs/path``); a host or query is a typo."""
    if uri.netloc or uri.query or uri.fragment:
        raise DataError(
            f"dataset URI {uri.geturl()!r} must be {uri.scheme}:///absolute/path "
            "(three slashes, no host, no query)"
        )
    return unquote(uri.path)
