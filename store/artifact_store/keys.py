"""Object keys: the one shape every artifact store accepts.

A key is a relative POSIX path of plain names (``<job_id>/rounds/3/mask.safetensors``). Checking it
once here means no store ever joins ``..``, an absolute path, a NUL or a backslash onto its root
or prefix, whatever a caller passes.
"""

from __future__ import annotations

#: Names the stores write while a file is in flight; never listed, never served.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial")


class InvalidKeyError(ValueError):
    """A key that is not a relative path of plain names."""


def check_key(key: str) -> str:
    """``key`` if it is a valid object key; raises :class:`InvalidKeyError` otherwise."""
    if not key or len(key) > 1024 or key.startswith("/") or key.endswith("/"):
        raise InvalidKeyError(f"not an object key: {key!r}")
    if any(c in key for c in ("\\", "\x00")) or any(ord(c) < 32 for c in key):
        raise InvalidKeyError(f"not an object key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKeyError(f"not an object key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A folder-like prefix (``<job_id>/`` or ``""`` for everything), with its slash."""
    if prefix == "":
        return prefix
    return check_key(prefix.rstrip("/")) + "/"


def is_hidden(name: str) -> bool:
    """Hidden (a part starts with a dot) or temporary: a file in flight, a draft, a lock."""
    return any(part.startswith(".") for part in name.split("/")) or name.endswith(
        TEMPORARY_SUFFIXES
    )
