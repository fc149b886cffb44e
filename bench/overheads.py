"""What a round costs besides its training steps, and what stacking a round's networks saves.

LeNet-300-100 on the real Fashion-MNIST, batch 60, the ticket and its random_reinit control of
one round (2 networks), as the service trains them. Every figure is a ratio measured in this run,
the parts interleaved over repeats (medians) so that machine noise hits all alike:
- evaluation: the batched evaluation of both networks on the validation and test splits at the
  default ``eval_every`` (1000 it) over a 5000-it round, against that round's training steps
  (target <= 10%);
- checkpoints and progress: a checkpoint of the stack at the default ``checkpoint_every`` and a
  progress report every step, against the training steps (target <= 3%);
- stacking: steps/s of the 2-network stack against the two networks trained one after the
  other, at one thread (what stacking alone saves) and at every core (what a job alone gets);
- memory: the resident split of the training data, uint8 against float32.

Run: ``python -m bench.overheads [--steps N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from api_schemas.spec import DatasetSpec, LayerRates, ModelSpec, TrainingSpec
from bench.common import FASHION_MNIST, write_result
from worker.engine.checkpoint import LoopState, save_checkpoint
from worker.engine.data import DataConfig, load_dataset
from worker.engine.masks import MaskEnforcer, dense_mask, prunable_layers
from worker.engine.models import build_model
from worker.engine.optim import build_optimizer
from worker.engine.pruning import prune_layerwise
from worker.engine.stack import StackedModel
from worker.engine.train import Trainee, _eval_points, train_step

ROUND_STEPS, EVAL_EVERY, CHECKPOINT_EVERY = 5000, 1000, 1000
TRAINING = TrainingSpec()


def _networks(n: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_model(ModelSpec(arch="lenet_300_100"), (1, 28, 28), 10) for _ in range(n)]


class _Setup:
    """A trainee with its optimizer and mask enforcer, as the training loop builds them."""

    def __init__(self, model: torch.nn.Module, masks: list[dict[str, torch.Tensor]]) -> None:
        self.trainee = Trainee(model)
        self.optimizer = build_optimizer(self.trainee.optimizer_parameters(), TRAINING)
        stacked = self.trainee.stacked
        mask = stacked.stacked_masks(masks) if stacked is not None else masks[0]
        self.enforce = MaskEnforcer(self.trainee.net, mask)

    def steps(self, batches: Any, count: int) -> float:
        started = time.perf_counter()
        for step in range(count):
            x, y = batches.batch(step)
            train_step(self.trainee, self.optimizer, self.enforce, x, y)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps per sample")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = DataConfig(roots=(FASHION_MNIST,))
    spec = DatasetSpec(uri=f"idx://{FASHION_MNIST}")
    dataset = load_dataset(spec, config, seed=0, device=torch.device("cpu"))
    batches = dataset.train_batches(60, 0)
    nets = _networks(2)
    mask = prune_layerwise(
        nets[0].state_dict(), dense_mask(nets[0]), prunable_layers(nets[0]), LayerRates()
    )
    masks = [mask, mask]
    stack = _Setup(StackedModel.from_models(copy.deepcopy(nets)), masks)
    alone = [_Setup(copy.deepcopy(net), [mask]) for net in nets]
    cores = torch.get_num_threads()

    samples: dict[str, list[float]] = {
        "stack_step_1": [],
        "alone_step_1": [],
        "stack_step_all": [],
        "alone_step_all": [],
        "eval": [],
        "checkpoint": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "stack.safetensors"
        loop = LoopState(step=0, curves=[[], []])
        for _ in range(args.repeats):
            for threads, suffix in ((1, "1"), (cores, "all")):
                torch.set_num_threads(threads)
                samples[f"stack_step_{suffix}"].append(
                    stack.steps(batches, args.steps) / args.steps
                )
                samples[f"alone_step_{suffix}"].append(
                    sum(a.steps(batches, args.steps) for a in alone) / args.steps
                )
            torch.set_num_threads(1)
            samples["eval"].append(
                _timed(lambda: _eval_points(stack.trainee, dataset, 0, None, "fp32"))
            )
            samples["checkpoint"].append(
                _timed(
                    lambda: save_checkpoint(
                        checkpoint,
                        stack.trainee.net,
                        stack.optimizer,
                        loop,
                        torch.zeros(2),
                    )
                )
            )

    median = {name: statistics.median(values) for name, values in samples.items()}
    training = median["stack_step_1"] * ROUND_STEPS
    evals = ROUND_STEPS // EVAL_EVERY + 1
    checkpoints = ROUND_STEPS // CHECKPOINT_EVERY
    x_train = dataset.stored("train")[0]  # type: ignore[attr-defined]
    results = {
        "eval_fraction": {
            "figure": "batched evaluation of ticket + control at eval_every 1000it / training time",
            "value": evals * median["eval"] / training,
            "target": 0.10,
            "comparison": "<=",
        },
        "checkpoint_fraction": {
            "figure": "checkpoints of the stack (every 1000it) / training time (progress is "
            "reported at most twice a second and written by the heartbeat thread: see "
            "search_cost d, the service against lth run)",
            "value": checkpoints * median["checkpoint"] / training,
            "target": 0.03,
            "comparison": "<=",
        },
        "stack_speedup_1_thread": {
            "figure": "steps/s of the 2-network stack / the 2 networks one after another, 1 thread",
            "value": median["alone_step_1"] / median["stack_step_1"],
        },
        "stack_speedup_all_cores": {
            "figure": f"the same at {cores} threads, against the 2 networks alone at 1 thread",
            "value": median["alone_step_1"] / median["stack_step_all"],
        },
        "train_split_bytes": {
            "figure": "resident training split, uint8 (float32 would be 4x)",
            "value": x_train.element_size() * x_train.numel(),
            "float32_bytes": 4 * x_train.numel(),
        },
    }
    for entry in results.values():
        if "target" in entry:
            entry["passed"] = entry["value"] <= entry["target"]
    path = write_result(
        "overheads",
        {
            "command": f"python -m bench.overheads --steps {args.steps} --repeats {args.repeats}",
            "medians_s": median,
            "results": results,
        },
    )
    for name, entry in results.items():
        print(f"{name:32s} {entry['value']:.4g}  {entry['figure']}")
    print(f"wrote {path}")


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
