"""Training throughput of the engine's loop, on LeNet-300-100 and the real Fashion-MNIST.

Compares, in one run and interleaved so that machine noise hits all alike (median of repeats):
- the engine's loop (``worker.engine.train.train``) with a pruned mask kept applied,
- the same loop with nothing to mask (the cost of keeping masks applied; target <= 10%),
- a minimal hand-written loop over the same in-memory tensors, with the engine's fused Adam and
  with torch's default Adam (target: engine >= 0.9x of either),
- the usual approach, torchvision's FashionMNIST + ToTensor/Normalize through a DataLoader
  (target: engine >= 3x faster).

Run: ``python -m bench.throughput [--steps N] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from api_schemas.spec import DatasetSpec, LayerRates, ModelSpec, TrainingSpec
from bench.common import FASHION_MNIST, RESULTS, write_result
from worker.engine.data import DataConfig, load_dataset
from worker.engine.masks import dense_mask, prunable_layers
from worker.engine.models import build_model
from worker.engine.optim import constant
from worker.engine.pruning import prune_layerwise
from worker.engine.train import TrainPlan, evaluate, train

BATCH = 60
TRAINING = TrainingSpec(optimizer="adam", lr=1.2e-3, batch_size=BATCH)


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="lenet_300_100"), (1, 28, 28), 10)


def engine_loop(steps: int, masked: bool) -> Callable[[], float]:
    """Steps/s of the engine's ``train`` (minus its two evaluations), masked or not."""
    dataset = load_dataset(
        DatasetSpec(uri=f"idx://{FASHION_MNIST}", validation_size=0),
        DataConfig(roots=(FASHION_MNIST,)),
        seed=0,
        device=torch.device("cpu"),
    )
    model = lenet()
    mask = prune_layerwise(
        model.state_dict(), dense_mask(model), prunable_layers(model), LayerRates()
    )
    plan = TrainPlan(
        start=0,
        end=steps,
        schedule=constant(TRAINING.lr, steps),
        eval_every=steps,
        checkpoint_every=steps,
        batch_size=BATCH,
        data_seed=0,
    )

    def measure() -> float:
        fresh = lenet()
        eval_started = time.perf_counter()
        evaluate(fresh, dataset, "test", "fp32")
        eval_cost = time.perf_counter() - eval_started
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            train(fresh, dataset, TRAINING, plan, mask if masked else {}, Path(tmp) / "ckpt")
            elapsed = time.perf_counter() - started - 2 * eval_cost
        return steps / elapsed

    return measure


def read_idx(path: Path) -> torch.Tensor:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


def minimal_loop(steps: int, fused: bool) -> Callable[[], float]:
    """The shortest correct loop over normalised tensors in memory: the speed to match.

    With ``fused=False`` it uses torch's default Adam, as a user would write it; with
    ``fused=True`` the same fused Adam as the engine, so the ratio isolates the loop's overhead.
    """
    x = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz").float().div_(255).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").long()

    def measure() -> float:
        model = lenet()
        optimizer = torch.optim.Adam(model.parameters(), lr=TRAINING.lr, fused=fused)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(x), generator=generator)
        per_epoch = len(x) // BATCH
        started = time.perf_counter()
        for step in range(steps):
            if step and step % per_epoch == 0:
                order = torch.randperm(len(x), generator=generator)
            index = order[(step % per_epoch) * BATCH : (step % per_epoch + 1) * BATCH]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[index]), y[index]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        return steps / (time.perf_counter() - started)

    return measure


def dataloader_loop(steps: int, root: Path) -> Callable[[], float]:
    """The usual approach: torchvision dataset, per-example PIL → ToTensor → Normalize."""
    import torchvision
    from torchvision import transforms

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_MNIST.glob("*-ubyte.gz"):
        with gzip.open(gz) as packed, (raw / gz.stem).open("wb") as out:
            shutil.copyfileobj(packed, out)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
    )
    dataset = torchvision.datasets.FashionMNIST(str(root), train=True, transform=transform)

    def measure() -> float:
        model = lenet()
        optimizer = torch.optim.Adam(model.parameters(), lr=TRAINING.lr)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
        started = time.perf_counter()
        done = 0
        while done < steps:
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                done += 1
                if done == steps:
                    break
        return steps / (time.perf_counter() - started)

    return measure


def plot(rates: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(rates)
    ax.barh(
        names,
        [rates[n] for n in names],
        color=["#3b6ea8", "#7aa6d6", "#777777", "#aaaaaa", "#d08c3c"],
    )
    for i, name in enumerate(names):
        ax.text(rates[name], i, f" {rates[name]:.0f}", va="center")
    ax.set_xlim(0, max(rates.values()) * 1.15)
    ax.set_xlabel("training steps / s (LeNet-300-100, Fashion-MNIST, batch 60, CPU)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as root:
        runs = {
            "engine (masked)": engine_loop(args.steps, masked=True),
            "engine (no mask)": engine_loop(args.steps, masked=False),
            "minimal loop (fused Adam)": minimal_loop(args.steps, fused=True),
            "minimal loop (default Adam)": minimal_loop(args.steps, fused=False),
            "DataLoader + ToTensor": dataloader_loop(args.steps, Path(root)),
        }
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for measure in runs.values():  # warm-up
            measure()
        for _ in range(args.repeats):
            for name, measure in runs.items():
                samples[name].append(measure())
    rates = {name: statistics.median(values) for name, values in samples.items()}
    engine = rates["engine (masked)"]
    ratios = {
        "engine_vs_minimal": engine / rates["minimal loop (fused Adam)"],
        "engine_vs_minimal_default_adam": engine / rates["minimal loop (default Adam)"],
        "engine_vs_dataloader": engine / rates["DataLoader + ToTensor"],
        "mask_overhead": rates["engine (no mask)"] / engine - 1,
    }
    targets = {
        "engine_vs_minimal": ratios["engine_vs_minimal"] >= 0.9,
        "engine_vs_minimal_default_adam": ratios["engine_vs_minimal_default_adam"] >= 0.9,
        "engine_vs_dataloader": ratios["engine_vs_dataloader"] >= 3.0,
        "mask_overhead": ratios["mask_overhead"] <= 0.10,
    }
    path = write_result(
        "throughput",
        {
            "config": vars(args) | {"batch_size": BATCH, "model": "lenet_300_100"},
            "steps_per_s_median": rates,
            "samples": samples,
            "ratios": ratios,
            "targets_met": targets,
        },
    )
    plot(rates, RESULTS / "throughput.png")
    for name, rate in rates.items():
        print(f"{name:>24}: {rate:8.1f} steps/s")
    for name, value in ratios.items():
        print(f"{name:>24}: {value:8.3f}  ({'met' if targets[name] else 'MISSED'})")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
