"""The training loop of one network of one round: masked SGD/Adam with periodic evaluation.

The loop is resumable at any checkpoint with bit-identical results on CPU: the learning rate and
the batches are pure functions of the step, and the checkpoint carries every RNG state. The single
step (``train_step``) is kept free of bookkeeping so that several networks can later be stepped
together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from api_schemas.results import EvalPoint
from api_schemas.spec import TrainingSpec
from worker.engine.checkpoint import LoopState, load_checkpoint, save_checkpoint
from worker.engine.data import Dataset
from worker.engine.errors import Stopped
from worker.engine.masks import MaskEnforcer
from worker.engine.optim import Schedule, build_optimizer, set_lr
from worker.engine.tensorio import save_tensors

ReportFn = Callable[[int, dict[str, float] | None], None]
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class TrainPlan:
    """Which steps to train, with what schedule, and what to save on the way."""

    start: int
    end: int
    schedule: Schedule
    eval_every: int
    checkpoint_every: int
    batch_size: int
    data_seed: int
    precision: Literal["fp32", "bf16"] = "fp32"
    snapshots: Mapping[int, Path] = field(default_factory=dict)  # step -> weights file


@dataclass(frozen=True)
class TrainOutcome:
    curve: list[EvalPoint]
    wall_time_s: float
    steps: int


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    enforce_mask: MaskEnforcer,
    x: Tensor,
    y: Tensor,
    precision: str = "fp32",
) -> Tensor:
    """One optimizer step; pruned weights are zero again before it returns. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(x.device, precision):
        loss = F.cross_entropy(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    enforce_mask()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, split: Literal["validation", "test"], precision: str
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=dataset.device, dtype=torch.float64)
    correct = torch.zeros((), device=dataset.device, dtype=torch.int64)
    count = 0
    for x, y in dataset.eval_batches(split):
        with _autocast(x.device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        count += len(y)
    model.train(was_training)
    return float(loss_sum) / count, int(correct) / count


def _eval_point(
    model: nn.Module, dataset: Dataset, step: int, train_loss: float | None, precision: str
) -> EvalPoint:
    val_loss = val_accuracy = None
    if dataset.validation_size:
        val_loss, val_accuracy = evaluate(model, dataset, "validation", precision)
    test_loss, test_accuracy = evaluate(model, dataset, "test", precision)
    return EvalPoint(
        step=step,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
    )


def train(
    model: nn.Module,
    dataset: Dataset,
    training: TrainingSpec,
    plan: TrainPlan,
    mask: Mapping[str, Tensor],
    checkpoint: Path,
    *,
    report: ReportFn | None = None,
    should_stop: StopFn | None = None,
    poll_seconds: float = 1.0,
) -> TrainOutcome:
    """Train ``model`` (already holding its starting weights) from ``plan.start`` to ``plan.end``.

    Resumes from ``checkpoint`` when it exists. Stops cooperatively when ``should_stop()`` turns
    true (polled every ``poll_seconds``), saving a checkpoint first and raising ``Stopped``.
    """
    device = dataset.device
    model.to(device).train()
    optimizer = build_optimizer(model.parameters(), training)
    enforce_mask = MaskEnforcer(model, mask)
    enforce_mask()
    batches = dataset.train_batches(plan.batch_size, plan.data_seed)

    loss_sum = torch.zeros((), device=device)
    loop = LoopState(step=plan.start)
    if checkpoint.exists():
        loop, loss_sum = load_checkpoint(checkpoint, model, optimizer, device)
    resumed_at = loop.step
    curve = [EvalPoint.model_validate(point) for point in loop.curve]

    def save(step: int) -> None:
        loop.step, loop.curve = step, [p.model_dump() for p in curve]
        loop.wall_time_s = wall_before + time.monotonic() - started
        save_checkpoint(checkpoint, model, optimizer, loop, loss_sum)

    def record_eval(step: int) -> None:
        nonlocal loss_sum
        train_loss = float(loss_sum) / loop.loss_count if loop.loss_count else None
        curve.append(_eval_point(model, dataset, step, train_loss, plan.precision))
        loss_sum = torch.zeros((), device=device)
        loop.loss_count = 0
        if report is not None:
            report(step, curve[-1].model_dump(exclude_none=True))

    wall_before, started = loop.wall_time_s, time.monotonic()
    last_poll = last_report = started
    for step in range(loop.step, plan.end):
        if (step - plan.start) % plan.eval_every == 0 and (not curve or curve[-1].step < step):
            record_eval(step)
        if step in plan.snapshots and not plan.snapshots[step].exists():
            save_tensors(plan.snapshots[step], model.state_dict())
        if step != resumed_at and (step - plan.start) % plan.checkpoint_every == 0:
            save(step)
        now = time.monotonic()
        if now - last_poll >= poll_seconds:
            last_poll = now
            if should_stop is not None and should_stop():
                save(step)
                raise Stopped(f"stopped at step {step}")
        if report is not None and now - last_report >= 0.5:
            last_report = now
            report(step, None)
        set_lr(optimizer, plan.schedule.lr_at(step))
        x, y = batches.batch(step)
        loss_sum += train_step(model, optimizer, enforce_mask, x, y, plan.precision)
        loop.loss_count += 1
    if not curve or curve[-1].step < plan.end:
        record_eval(plan.end)
    wall = wall_before + time.monotonic() - started
    return TrainOutcome(curve=curve, wall_time_s=wall, steps=plan.end - plan.start)
