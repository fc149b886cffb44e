"""The baseline: the paper's LeNet-300-100 experiment as one plain, serial PyTorch script.

This is what a competent engineer writes by hand to find a lottery ticket on Fashion-MNIST, with
nothing of the project but the data files: 55,000/5,000/10,000 split, Adam 1.2e-3, batch 60,
layer-wise magnitude pruning 20/20/10% of the survivors, rewinding to the initial weights, and the
random-reinitialisation control of every pruned round, each training one after the other with
torch's default thread settings. ``bench.search_cost`` times the service against it.

Run: ``python -m bench.plain_script [--steps 5000] [--rounds 8] [--eval-every 1000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DATA = Path(os.environ.get("LTH_BENCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
VALIDATION = 5000
BATCH = 60
LR = 1.2e-3
RATES = (0.2, 0.2, 0.1)  # fc1, fc2, output


def read_idx(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data: Path, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Train/validation/test tensors, flattened, scaled to [0, 1] and standardised on train."""

    def pair(images: str, labels: str) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(read_idx(data / images).copy()).float().div(255).flatten(1)
        return x, torch.from_numpy(read_idx(data / labels).copy()).long()

    x, y = pair("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    x_test, y_test = pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[VALIDATION:], order[:VALIDATION]
    mean, std = x[train_idx].mean(), x[train_idx].std()

    def norm(t: Tensor) -> Tensor:
        return (t - mean) / std

    return {
        "train": (norm(x[train_idx]), y[train_idx]),
        "val": (norm(x[val_idx]), y[val_idx]),
        "test": (norm(x_test), y_test),
    }


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def weights(model: nn.Sequential) -> list[Tensor]:
    return [m.weight for m in model if isinstance(m, nn.Linear)]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    loss, correct = 0.0, 0
    for i in range(0, len(x), 1000):
        logits = model(x[i : i + 1000])
        loss += F.cross_entropy(logits, y[i : i + 1000], reduction="sum").item()
        correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
    return loss / len(x), correct / len(x)


def train(
    model: nn.Sequential,
    masks: list[Tensor],
    data: dict[str, tuple[Tensor, Tensor]],
    steps: int,
    eval_every: int,
    seed: int,
) -> dict[str, Any]:
    """Train with the masks kept applied; the test accuracy at the minimum validation loss."""
    x, y = data["train"]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w, m in zip(weights(model), masks, strict=True):
            w.mul_(m)
    curve = []
    order, position = torch.randperm(len(x), generator=generator), 0
    for step in range(1, steps + 1):
        if position + BATCH > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + BATCH]
        position += BATCH
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with torch.no_grad():
            for w, m in zip(weights(model), masks, strict=True):
                w.mul_(m)
        if step % eval_every == 0 or step == steps:
            model.eval()
            val_loss, _ = evaluate(model, *data["val"])
            _, test_acc = evaluate(model, *data["test"])
            model.train()
            curve.append({"step": step, "val_loss": val_loss, "test_accuracy": test_acc})
    best = min(curve, key=lambda p: p["val_loss"])
    return {
        "accuracy": best["test_accuracy"],
        "early_stop_step": best["step"],
        "final_test_accuracy": curve[-1]["test_accuracy"],
    }


def prune(model: nn.Sequential, masks: list[Tensor]) -> list[Tensor]:
    """Remove the smallest-magnitude surviving weights of each layer at its rate."""
    pruned = []
    for w, m, rate in zip(weights(model), masks, RATES, strict=True):
        survivors = w.detach().abs()[m.bool()]
        k = round(rate * survivors.numel())
        threshold = survivors.kthvalue(k).values if k else survivors.new_tensor(-1.0)
        pruned.append(m * (w.detach().abs() > threshold).float())
    return pruned


def run(
    steps: int = 5000, rounds: int = 8, eval_every: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The whole experiment; returns its wall time (data loading included) and every round."""
    started = time.perf_counter()
    data = load(DATA, seed)
    torch.manual_seed(seed)
    model = lenet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    masks = [torch.ones_like(w) for w in weights(model)]
    table = []
    for k in range(rounds + 1):
        if k:
            masks = prune(model, masks)
            model.load_state_dict(initial)
        ticket = train(model, masks, data, steps, eval_every, seed)
        row: dict[str, Any] = {
            "round": k,
            "density": sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks),
            "ticket": ticket,
        }
        if k:
            control = lenet()  # same mask, fresh random initialisation
            row["random_reinit"] = train(control, masks, data, steps, eval_every, seed)
        table.append(row)
        print(
            f"round {k}: density {100 * row['density']:6.2f}%  ticket {ticket['accuracy']:.2%}"
            + (f"  random_reinit {row['random_reinit']['accuracy']:.2%}" if k else "")
        )
    wall = time.perf_counter() - started
    print(f"wall time: {wall:.1f} s")
    return {"wall_time_s": wall, "rounds": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.steps, args.rounds, args.eval_every, args.seed)


if __name__ == "__main__":
    main()
