"""Learnable data made offline, for tests and smoke runs: class prototypes plus noise.

``synthetic://?classes=10&shape=1,28,28&train=2000&test=500&seed=0&noise=0.3`` draws one fixed
random prototype per class in [0, 1] and makes each example its class's prototype plus Gaussian
noise, clipped to [0, 1]. The same query always gives the same arrays.
"""

from __future__ import annotations

import numpy as np

from api_schemas.synthetic import parse_synthetic
from worker.engine.data.arrays import Array, RawArrays
from worker.engine.errors import DataError


def make(query: str) -> RawArrays:
    try:
        params = parse_synthetic(query)
    except ValueError as error:
        raise DataError(str(error)) from error
    rng = np.random.default_rng(params.seed)
    prototypes = rng.random((params.classes, *params.shape), dtype=np.float32)
    x_train, y_train = _draw(rng, prototypes, params.train, params.noise)
    x_test, y_test = _draw(rng, prototypes, params.test, params.noise)
    return RawArrays(f"synthetic://?{query}", x_train, y_train, x_test, y_test)


def _draw(
    rng: np.random.Generator, prototypes: Array, count: int, noise: float
) -> tuple[Array, Array]:
    labels = rng.permutation(np.arange(count) % len(prototypes)).astype(np.int64)
    shape = (count, *prototypes.shape[1:])
    examples = prototypes[labels] + noise * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(examples, 0.0, 1.0, out=examples), labels
