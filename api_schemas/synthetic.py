"""The ``synthetic://`` dataset URI: its parameters, checked where the spec is validated.

``synthetic://?classes=10&shape=1,28,28&train=2000&test=500&seed=0&noise=0.3`` names learnable
data made offline (class prototypes plus noise). Parsing lives in the contract so a typo is a 422
at submission rather than a failed job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl

DEFAULTS: dict[str, str] = {
    "classes": "10",
    "shape": "1,28,28",
    "train": "2000",
    "test": "500",
    "seed": "0",
    "noise": "0.3",
}
#: Caps checked before anything is drawn, so a typo cannot allocate the worker's whole memory:
#: examples per split, classes, and float32 values in all (class prototypes, train and test
#: examples: 1 GiB).
MAX_EXAMPLES = 10_000_000
MAX_CLASSES = 100_000
MAX_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class SyntheticParams:
    classes: int
    shape: tuple[int, ...]
    train: int
    test: int
    seed: int
    noise: float


def parse_synthetic(query: str) -> SyntheticParams:
    """The parameters of a ``synthetic://?<query>`` URI; ``ValueError`` says what is wrong."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as error:
        raise ValueError(f"synthetic:// query {query!r} is malformed ({error})") from error
    raw = dict(DEFAULTS)
    for name, value in pairs:
        if name not in DEFAULTS:
            raise ValueError(f"synthetic:// has no parameter {name!r}; use {', '.join(DEFAULTS)}")
        raw[name] = value
    try:
        params = SyntheticParams(
            classes=int(raw["classes"]),
            shape=tuple(int(d) for d in raw["shape"].split(",")),
            train=int(raw["train"]),
            test=int(raw["test"]),
            seed=int(raw["seed"]),
            noise=float(raw["noise"]),
        )
    except ValueError as error:
        raise ValueError(f"synthetic:// parameters {raw} are not numbers ({error})") from error
    if (
        params.classes < 2
        or min(params.train, params.test) < 1
        or not 1 <= len(params.shape) <= 3
        or min(params.shape) < 1
    ):
        raise ValueError(
            "synthetic:// needs classes >= 2, train and test >= 1 and a shape of 1 to 3 "
            f"positive dims, got classes={params.classes}, train={params.train}, "
            f"test={params.test}, shape={raw['shape']}"
        )
    if not (0 <= params.noise < math.inf) or params.seed < 0:
        raise ValueError("synthetic:// noise must be a non-negative number and seed >= 0")
    _check_size(params)
    return params


def _check_size(params: SyntheticParams) -> None:
    for name, cap in (("train", MAX_EXAMPLES), ("test", MAX_EXAMPLES), ("classes", MAX_CLASSES)):
        if getattr(params, name) > cap:
            raise ValueError(
                f"synthetic:// {name}={getattr(params, name)} is more than this service makes "
                f"(at most {cap:,})"
            )
    rows = params.classes + params.train + params.test
    if rows * math.prod(params.shape) > MAX_ELEMENTS:
        shape = ",".join(map(str, params.shape))
        raise ValueError(
            f"synthetic:// shape={shape} with classes={params.classes}, train={params.train} "
            f"and test={params.test} is {rows * math.prod(params.shape):,} values; "
            f"at most {MAX_ELEMENTS:,} are made"
        )
