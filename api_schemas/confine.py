"""Confining a file location named in a spec to the operator's data roots.

The service checks a spec when it is submitted and a worker opens the file later. Both must read
the string as the same path, or a spec passes the check naming one file and opens another (a
``?`` or ``#`` that one parser drops while the other resolves ``..`` through it). So both call
:func:`confine`; it is torch-free because the service must not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Characters no location here contains; ``urlsplit`` silently drops some of them (tab, CR, LF).
_CONTROL = frozenset(map(chr, [*range(32), 127]))


class PathRefusedError(ValueError):
    """A location a spec may not name; the message says why, for the user."""


def location_path(location: str, schemes: Collection[str] = ("file",)) -> str:
    """The absolute path ``location`` names: a plain absolute path, or ``<scheme>:///path``
    for one of ``schemes`` (percent-escapes decoded).

    Whatever two parsers could read differently is refused rather than interpreted: a query or
    a fragment (``?`` or ``#``, in a plain path too), a host, control characters, NUL bytes,
    other schemes and relative paths.
    """
    if "\x00" in location:
        raise PathRefusedError(f"{location!r} contains a NUL byte")
    if not _CONTROL.isdisjoint(location):
        raise PathRefusedError(f"{location!r} contains control characters")
    if "?" in location or "#" in location:
        raise PathRefusedError(
            f"{location!r} has a query or fragment ('?' or '#'); name the file alone (a file "
            "name's '?' or '#' is written %3F or %23 in a file:// URI)"
        )
    if location.startswith("/"):
        return location
    try:
        parts = urlsplit(location)
    except ValueError as error:
        raise PathRefusedError(f"{location!r} is not a valid URI ({error})") from error
    if not parts.scheme:
        raise PathRefusedError(f"{location!r} is relative; it must be absolute (start with /)")
    if parts.scheme not in schemes:
        accepted = " or ".join(f"{scheme}:///absolute/path" for scheme in schemes)
        raise PathRefusedError(
            f"{location!r} has the scheme {parts.scheme!r}; write an absolute path or {accepted}"
        )
    if parts.netloc:
        raise PathRefusedError(
            f"{location!r} names the host {parts.netloc!r}; write "
            f"{parts.scheme}:///absolute/path (three slashes, no host)"
        )
    path = unquote(parts.path)
    if "\x00" in path:
        raise PathRefusedError(f"{location!r} contains a NUL byte")
    if not path.startswith("/"):
        raise PathRefusedError(
            f"{location!r} is relative; it must be absolute, e.g. {parts.scheme}:///data/x"
        )
    return path


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, area: Path) -> bool:
    return path == area or area in path.parents


def confine_path(path: str, roots: Sequence[Path], excluded: Sequence[Path] = ()) -> Path:
    """The real path of the absolute ``path`` if it lies inside one of ``roots`` and in none of
    ``excluded``, else PathRefusedError.

    Symlinks and ``..`` are resolved first, so neither leads out of a root or into an excluded
    area (the upload area: an upload is named ``dataset://<id>``, which checks its owner).
    Existence is not tested: a spec must not be able to probe the file system.
    """
    if "\x00" in path:
        raise PathRefusedError(f"{path!r} contains a NUL byte")
    if not path.startswith("/"):
        raise PathRefusedError(f"{path!r} is relative; it must be absolute (start with /)")
    if not roots:
        raise PathRefusedError(f"{path} cannot be read: no data roots are configured")
    resolved = _real(path)
    if not any(_inside(resolved, _real(root)) for root in roots):
        listed = ", ".join(str(root) for root in roots)
        raise PathRefusedError(f"{path} is outside the data roots ({listed})")
    for area in excluded:
        if _inside(resolved, _real(area)):
            raise PathRefusedError(
                f"{path} is inside the upload area ({area}); name an upload as dataset://<id>"
            )
    return resolved


def confine(
    location: str,
    roots: Sequence[Path],
    excluded: Sequence[Path] = (),
    *,
    schemes: Collection[str] = ("file",),
) -> Path:
    """The real path ``location`` (a path or a URI of ``schemes``) names, confined to ``roots``
    outside ``excluded``; PathRefusedError says why not. See :func:`location_path` and
    :func:`confine_path`."""
    return confine_path(location_path(location, schemes), roots, excluded)
