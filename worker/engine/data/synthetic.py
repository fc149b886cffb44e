"""Learnable data made offline, for tests and smoke runs: class prototypes plus noise.

``synthetic://?classes=10&shape=1,28,28&train=2000&test=500&seed=0&noise=0.3`` draws one fixed
random prototype per class in [0, 1] and makes each example its class's prototype plus Gaussian
noise, clipped to [0, 1]. The same query always gives the same arrays.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import numpy as np

from worker.engine.data.arrays import Array, RawArrays
from worker.engine.errors import DataError

DEFAULTS: dict[str, str] = {
    "classes": "10",
    "shape": "1,28,28",
    "train": "2000",
    "test": "500",
    "seed": "0",
    "noise": "0.3",
}
MAX_ELEMENTS = 1 << 30  # per split: a typo must not allocate the worker's whole memory


def parse(query: str) -> dict[str, str]:
    """The query's parameters over DEFAULTS; unknown names are errors, not silently ignored."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as error:
        raise DataError(f"synthetic:// query {query!r} is malformed ({error})") from error
    params = dict(DEFAULTS)
    for name, value in pairs:
        if name not in DEFAULTS:
            raise DataError(f"synthetic:// has no parameter {name!r}; use {', '.join(DEFAULTS)}")
        params[name] = value
    return params


def make(query: str) -> RawArrays:
    params = parse(query)
    try:
        classes = int(params["classes"])
        shape = tuple(int(d) for d in params["shape"].split(","))
        sizes = int(params["train"]), int(params["test"])
        seed = int(params["seed"])
        noise = float(params["noise"])
    except ValueError as error:
        raise DataError(f"synthetic:// parameters {params} are not numbers ({error})") from error
    if classes < 2 or min(sizes) < 1 or not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise DataError(
            f"synthetic:// needs classes >= 2, train and test >= 1 and a shape of 1 to 3 "
            f"positive dims, got classes={classes}, train={sizes[0]}, test={sizes[1]}, "
            f"shape={params['shape']}"
        )
    if not 0 <= noise < float("inf"):
        raise DataError(f"synthetic:// noise must be a non-negative number, got {noise}")
    if max(sizes) * int(np.prod(shape)) > MAX_ELEMENTS:
        raise DataError(f"synthetic:// data of {max(sizes)} x {shape} is too large")
    rng = np.random.default_rng(seed)
    prototypes = rng.random((classes, *shape), dtype=np.float32)
    x_train, y_train = _draw(rng, prototypes, sizes[0], noise)
    x_test, y_test = _draw(rng, prototypes, sizes[1], noise)
    return RawArrays(f"synthetic://?{query}", x_train, y_train, x_test, y_test)


def _draw(
    rng: np.random.Generator, prototypes: Array, count: int, noise: float
) -> tuple[Array, Array]:
    labels = rng.permutation(np.arange(count) % len(prototypes)).astype(np.int64)
    shape = (count, *prototypes.shape[1:])
    examples = prototypes[labels] + noise * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(examples, 0.0, 1.0, out=examples), labels
