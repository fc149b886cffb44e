"""Opaque, time-ordered ids (`job_…`, `ds_…`): ULID-style, 26 Crockford base32 characters.

Time-ordered so they index well and sort roughly by creation; random enough (80 bits) that they
cannot be guessed — though access control never relies on that.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
ID_BODY_LENGTH = 26
_ID_RE = re.compile(rf"^[a-z]+_[{_ALPHABET}]{{{ID_BODY_LENGTH}}}$")


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 48 bits of milliseconds + 80 random bits, base32 encoded."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(ID_BODY_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def looks_like_id(text: str, prefix: str) -> bool:
    """Whether ``text`` has the shape of an id with ``prefix`` (cheap pre-check, not a lookup).

    Lookups check it first: text of any other shape names nothing, and must not reach the
    database, which may refuse it outright (PostgreSQL and a NUL character).
    """
    return text.startswith(prefix + "_") and _ID_RE.fullmatch(text) is not None
