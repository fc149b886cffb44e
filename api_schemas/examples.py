"""Example specs shared by the API's documentation, the demo and the tests."""

from __future__ import annotations

import copy
from typing import Any

_MINIMAL: dict[str, Any] = {
    "model": {"arch": "lenet_300_100"},
    "dataset": {"uri": "idx:///usr/share/datasets/fashion-mnist", "validation_size": 5000},
    "training": {
        "optimizer": "adam",
        "lr": 0.0012,
        "batch_size": 60,
        "steps": "300it",
        "eval_every": "100it",
    },
    "pruning": {
        "strategy": "layerwise",
        "rounds": 2,
        "rewind_to": "0it",
        "controls": ["random_reinit"],
    },
    "seed": 0,
}


def minimal_spec(**sections: Any) -> dict[str, Any]:
    """The minimal spec (LeNet-300-100 on the local Fashion-MNIST, two rounds, one control) as
    the service must accept it; keyword arguments replace whole top-level sections."""
    return copy.deepcopy(_MINIMAL) | copy.deepcopy(sections)


#: The minimal spec itself, for documentation.
MINIMAL_SPEC: dict[str, Any] = minimal_spec()
