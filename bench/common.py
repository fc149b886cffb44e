"""What every benchmark shares: where results go and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FASHION_MNIST = Path(os.environ.get("LTH_BENCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def lenet_spec(
    *,
    steps: int | str,
    rounds: int,
    controls: list[str],
    eval_every: int | str | None = None,
    checkpoint_every: int | str | None = None,
    seed: int = 0,
    replicates: int = 1,
    reuse: bool = False,
) -> dict[str, Any]:
    """The paper's LeNet-300-100 setup on the real Fashion-MNIST, on the CPU, as a job spec.

    Lengths are iterations (ints) or step strings (``'20ep'``); an evaluation interval longer than
    the run is the run. Benchmark jobs reuse nothing of earlier jobs (``reuse`` false) unless a
    benchmark asks.
    """

    def its(value: int | str) -> str:
        return f"{value}it" if isinstance(value, int) else value

    every = eval_every or steps
    if isinstance(every, int) and isinstance(steps, int):
        every = min(every, steps)
    training: dict[str, Any] = {
        "optimizer": "adam",
        "lr": 1.2e-3,
        "batch_size": 60,
        "steps": its(steps),
        "eval_every": its(every),
        "device": "cpu",
    }
    if checkpoint_every is not None:
        training["checkpoint_every"] = its(checkpoint_every)
    spec: dict[str, Any] = {
        "model": {"arch": "lenet_300_100"},
        "dataset": {"uri": f"idx://{FASHION_MNIST}", "validation_size": 5000},
        "training": training,
        "pruning": {
            "strategy": "layerwise",
            "rates": {"linear": 0.2, "output": 0.1},
            "rounds": rounds,
            "rewind_to": "0it",
            "controls": controls,
        },
        "seed": seed,
        "reuse": reuse,
    }
    if replicates != 1:
        spec["replicates"] = replicates
    return spec
