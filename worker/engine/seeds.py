"""Independent, reproducible seeds for each random choice of a run, derived from the job's seed.

Deriving by hashing (rather than ``seed + 1``) keeps streams apart: the init of round 3's
random-reinit control never coincides with another job's data order.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed determined by ``seed`` and the ``tags`` naming its use."""
    text = ":".join([str(seed), *map(str, tags)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def replicate_seed(seed: int, replicate: int) -> int:
    """Replicate 0 is the job's own seed; the others are derived from it (and fit a spec seed)."""
    return seed if replicate == 0 else derive_seed(seed, "replicate", replicate) % 2**31
