"""A dataset's identity for caching by content: the data plus everything that shapes the splits."""

from __future__ import annotations

import hashlib
import json

from api_schemas.spec import DatasetSpec


def fingerprint(data_digest: str, spec: DatasetSpec, seed: int) -> str:
    """sha256 hex of the data's digest, the hold-out (size and seed) and the preprocessing.

    The URI is left out on purpose: the same bytes under another name are the same dataset.
    """
    recipe = {
        "data": data_digest,
        "validation_size": spec.validation_size,
        "seed": seed,
        "normalize": spec.normalize,
        "augment": spec.augment,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
