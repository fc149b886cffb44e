"""The training loop of a round: one network, or several siblings stacked into one, masked
SGD/Adam with periodic evaluation.

The loop is resumable at any checkpoint with bit-identical results on CPU (for a fixed thread
count): the learning rate and the batches are pure functions of the step, and the checkpoint
carries every RNG state. Siblings share the schedule and the evaluation steps; each has its own
weights, mask, optimizer state and data order (siblings of one IMP chain share theirs, as the
paper's ticket and controls do).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
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
from worker.engine.errors import DivergedError, Stopped
from worker.engine.hooks import StopFn, ThreadsFn
from worker.engine.masks import MaskEnforcer
from worker.engine.optim import Schedule, build_optimizer, set_lr
from worker.engine.stack import StackedModel
from worker.engine.tensorio import save_tensors

#: Steps between two checks that the losses are finite, at most.
LOSS_WINDOW = 64

#: Called with the step and, at an evaluation, each sibling's metrics (None between them).
ReportFn = Callable[[int, list[dict[str, float]] | None], None]


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
class Sibling:
    """What differs between the networks of one stacked training besides their weights."""

    data_seed: int
    snapshots: Mapping[int, Path] = field(default_factory=dict)  # step -> weights file


@dataclass(frozen=True)
class TrainOutcome:
    curve: list[EvalPoint]
    wall_time_s: float
    steps: int


class Trainee:
    """The networks a loop trains: one model as it is, or a ``StackedModel`` of siblings.

    ``net`` holds the parameters (named like the single model's), ``logits`` gives
    ``(S, B, classes)``, ``state(i)`` sibling i's state dict.
    """

    def __init__(self, model: nn.Module) -> None:
        self.stacked = model if isinstance(model, StackedModel) else None
        self.net: nn.Module = self.stacked.net if self.stacked is not None else model
        self.size = self.stacked.size if self.stacked is not None else 1
        self._model = model
        self._parameters = list(self.net.parameters())

    def logits(self, x: Tensor, per_sibling: bool) -> Tensor:
        if self.stacked is not None:
            stacked: Tensor = self.stacked(x, per_sibling=per_sibling)
            return stacked
        logits: Tensor = self._model(x[0] if per_sibling else x)
        return logits.unsqueeze(0)

    def optimizer_parameters(self) -> list[Tensor]:
        if self.stacked is not None:
            return self.stacked.sibling_parameters()
        return list(self.net.parameters())

    def zero_grad(self) -> None:
        # What ``Module.zero_grad(set_to_none=True)`` does, without walking the modules again
        # on every step (a tenth of the time a lane holds the GIL, for LeNet).
        for parameter in self._parameters:
            parameter.grad = None

    def share_gradients(self) -> None:
        if self.stacked is not None:
            self.stacked.share_gradients()

    def state(self, index: int) -> dict[str, Tensor]:
        if self.stacked is not None:
            return self.stacked.sibling_state(index)
        return self._model.state_dict()

    def train(self, mode: bool = True) -> None:
        self._model.train(mode)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sibling_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Each sibling's mean cross-entropy, ``(S,)``, for logits ``(S, B, K)`` and labels ``(S, B)``
    (or ``(B,)`` shared)."""
    size, batch = logits.shape[0], logits.shape[1]
    # One reduction for any number of siblings, so that a network's losses do not depend on
    # how many it was stacked with (fused "mean" rounds differently).
    target = y.expand(size, batch) if y.dim() == 1 else y
    losses = F.cross_entropy(logits.flatten(0, 1), target.reshape(-1), reduction="none")
    return losses.view(size, batch).mean(dim=1)


def train_step(
    trainee: Trainee,
    optimizer: torch.optim.Optimizer,
    enforce_mask: MaskEnforcer,
    x: Tensor,
    y: Tensor,
    precision: str = "fp32",
    per_sibling: bool = False,
) -> Tensor:
    """One optimizer step of every sibling; pruned weights are zero again before it returns.
    Returns the siblings' losses ``(S,)``. The summed loss gives each sibling the gradient of
    its own mean loss."""
    trainee.zero_grad()
    with _autocast(x.device, precision):
        losses = sibling_losses(trainee.logits(x, per_sibling).float(), y)
    losses.sum().backward()  # type: ignore[no-untyped-call]
    trainee.share_gradients()
    optimizer.step()
    enforce_mask()
    return losses.detach()


@torch.no_grad()
def evaluate_siblings(
    trainee: Trainee, dataset: Dataset, split: Literal["validation", "test"], precision: str
) -> list[tuple[float, float]]:
    """Each sibling's mean cross-entropy and accuracy over a whole split, in one pass."""
    was_training = trainee.net.training
    trainee.train(False)
    loss_sum = torch.zeros(trainee.size, device=dataset.device, dtype=torch.float64)
    correct = torch.zeros(trainee.size, device=dataset.device, dtype=torch.int64)
    count = 0
    for x, y in dataset.eval_batches(split):
        with _autocast(x.device, precision):
            logits = trainee.logits(x, per_sibling=False).float()
        size, batch = logits.shape[0], logits.shape[1]
        losses = F.cross_entropy(
            logits.flatten(0, 1), y.expand(size, batch).reshape(-1), reduction="none"
        )
        loss_sum += losses.view(size, batch).sum(dim=1)
        correct += (logits.argmax(dim=2) == y).sum(dim=1)
        count += len(y)
    trainee.train(was_training)
    losses_out = (loss_sum / max(count, 1)).tolist()
    accuracy = (correct.double() / max(count, 1)).tolist()
    return list(zip(losses_out, accuracy, strict=True))


def evaluate(
    model: nn.Module, dataset: Dataset, split: Literal["validation", "test"], precision: str
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of one model over a whole split."""
    return evaluate_siblings(Trainee(model), dataset, split, precision)[0]


def _eval_points(
    trainee: Trainee,
    dataset: Dataset,
    step: int,
    train_losses: list[float] | None,
    precision: str,
) -> list[EvalPoint]:
    size = trainee.size
    validation: list[tuple[float | None, float | None]] = [(None, None)] * size
    if dataset.validation_size:
        validation = list(evaluate_siblings(trainee, dataset, "validation", precision))
    test = evaluate_siblings(trainee, dataset, "test", precision)
    return [
        EvalPoint(
            step=step,
            train_loss=None if train_losses is None else train_losses[i],
            val_loss=validation[i][0],
            val_accuracy=validation[i][1],
            test_loss=test[i][0],
            test_accuracy=test[i][1],
        )
        for i in range(size)
    ]


class _Batches:
    """One step's inputs for every sibling: shared when all siblings share a data order,
    else stacked per sibling (siblings of one order share one drawn batch)."""

    def __init__(self, dataset: Dataset, batch_size: int, seeds: Sequence[int]) -> None:
        self.orders = sorted(set(seeds))
        self.sources = [dataset.train_batches(batch_size, seed) for seed in self.orders]
        self.index = torch.tensor([self.orders.index(seed) for seed in seeds])
        self.shared = len(self.orders) == 1
        self._identity = self.index.tolist() == list(range(len(self.orders)))

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        if self.shared:
            x, y = self.sources[0].batch(step)
            return x, y
        drawn = [source.batch(step) for source in self.sources]
        x = torch.stack([d[0] for d in drawn])
        y = torch.stack([d[1] for d in drawn])
        if not self._identity:
            index = self.index.to(x.device)
            x, y = x.index_select(0, index), y.index_select(0, index)
        return x, y


def train(
    model: nn.Module,
    dataset: Dataset,
    training: TrainingSpec,
    plan: TrainPlan,
    mask: Mapping[str, Tensor],
    checkpoint: Path,
    *,
    report: Callable[[int, dict[str, float] | None], None] | None = None,
    should_stop: StopFn | None = None,
    poll_seconds: float = 1.0,
    threads: ThreadsFn | None = None,
) -> TrainOutcome:
    """Train one ``model`` (already holding its starting weights); see ``train_siblings``."""

    def report_one(step: int, metrics: list[dict[str, float]] | None) -> None:
        if report is not None:
            report(step, None if metrics is None else metrics[0])

    return train_siblings(
        model,
        dataset,
        training,
        plan,
        mask,
        [Sibling(plan.data_seed, plan.snapshots)],
        checkpoint,
        report=report_one,
        should_stop=should_stop,
        poll_seconds=poll_seconds,
        threads=threads,
    )[0]


def train_siblings(
    model: nn.Module,
    dataset: Dataset,
    training: TrainingSpec,
    plan: TrainPlan,
    mask: Mapping[str, Tensor],
    siblings: Sequence[Sibling],
    checkpoint: Path,
    *,
    report: ReportFn | None = None,
    should_stop: StopFn | None = None,
    poll_seconds: float = 1.0,
    threads: ThreadsFn | None = None,
) -> list[TrainOutcome]:
    """Train ``model`` (one network, or a ``StackedModel`` of ``len(siblings)``) from
    ``plan.start`` to ``plan.end``; ``mask`` is keyed by its parameter names (stacked masks for
    a stack). Returns one outcome per sibling.

    Resumes from ``checkpoint`` when it exists. Stops cooperatively when ``should_stop()`` turns
    true (polled every ``poll_seconds``), saving a checkpoint first and raising ``Stopped``.
    ``threads()``, polled as often, sets how many CPU threads the loop may use.
    """
    device = dataset.device
    trainee = Trainee(model)
    if trainee.size != len(siblings):
        raise ValueError(f"{trainee.size} networks but {len(siblings)} siblings")
    model.to(device)
    trainee.train(True)
    optimizer = build_optimizer(trainee.optimizer_parameters(), training)
    enforce_mask = MaskEnforcer(trainee.net, mask)
    enforce_mask()
    batches = _Batches(dataset, plan.batch_size, [s.data_seed for s in siblings])
    per_sibling = not batches.shared

    loss_sum = torch.zeros(trainee.size, device=device)
    # The last LOSS_WINDOW steps' losses, kept on the device: the running sum turns non-finite
    # with any of them, so the loop checks the sum now and then (a synchronisation every
    # LOSS_WINDOW steps at most) and only then looks for the first bad step in the window.
    window = torch.zeros(LOSS_WINDOW, trainee.size, device=device)
    loop = LoopState(step=plan.start, curves=[[] for _ in siblings])
    if checkpoint.exists():
        loop, loss_sum = load_checkpoint(checkpoint, trainee.net, optimizer, device)
    resumed_at = loop.step
    curves = [[EvalPoint.model_validate(point) for point in curve] for curve in loop.curves]

    def save(step: int) -> None:
        loop.step, loop.curves = step, [[p.model_dump() for p in curve] for curve in curves]
        loop.wall_time_s = wall_before + time.monotonic() - started
        save_checkpoint(checkpoint, trainee.net, optimizer, loop, loss_sum)

    def record_eval(step: int) -> None:
        nonlocal loss_sum
        train_losses = (loss_sum / loop.loss_count).tolist() if loop.loss_count else None
        points = _eval_points(trainee, dataset, step, train_losses, plan.precision)
        for curve, point in zip(curves, points, strict=True):
            curve.append(point)
        loss_sum = torch.zeros(trainee.size, device=device)
        loop.loss_count = 0
        if report is not None:
            report(step, [p.model_dump(exclude_none=True) for p in points])

    checked = loop.step  # every step before this one had a finite loss

    def check_finite(step: int) -> None:
        nonlocal checked
        if step > checked and not bool(torch.isfinite(loss_sum).all()):
            for done in range(max(checked, step - LOSS_WINDOW), step):
                bad = ~torch.isfinite(window[done % LOSS_WINDOW])
                if bool(bad.any()):
                    checkpoint.unlink(missing_ok=True)  # nothing to resume: it cannot recover
                    raise DivergedError(done + 1, int(bad.nonzero()[0, 0]))
            # Every loss finite but their sum overflowed: losses of ~1e38 are divergence too.
            checkpoint.unlink(missing_ok=True)
            raise DivergedError(step, int((~torch.isfinite(loss_sum)).nonzero()[0, 0]))
        checked = step

    def apply_threads() -> None:
        if threads is not None:
            wanted = max(1, threads())
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)

    apply_threads()
    wall_before, started = loop.wall_time_s, time.monotonic()
    last_poll = last_report = started
    for step in range(loop.step, plan.end):
        if (step - plan.start) % plan.eval_every == 0 and (
            not curves[0] or curves[0][-1].step < step
        ):
            check_finite(step)
            record_eval(step)
        for index, sibling in enumerate(siblings):
            path = sibling.snapshots.get(step)
            if path is not None and not path.exists():
                save_tensors(path, trainee.state(index))
        if step != resumed_at and (step - plan.start) % plan.checkpoint_every == 0:
            check_finite(step)  # a checkpoint of diverged weights would only diverge again
            save(step)
        now = time.monotonic()
        if now - last_poll >= poll_seconds:
            last_poll = now
            check_finite(step)
            if should_stop is not None and should_stop():
                save(step)
                raise Stopped(f"stopped at step {step}")
            apply_threads()
        if report is not None and now - last_report >= 0.5:
            last_report = now
            report(step, None)
        set_lr(optimizer, plan.schedule.lr_at(step))
        x, y = batches.batch(step)
        losses = train_step(
            trainee, optimizer, enforce_mask, x, y, plan.precision, per_sibling=per_sibling
        )
        loss_sum += losses
        window[step % LOSS_WINDOW] = losses
        loop.loss_count += 1
        if step + 1 - checked >= LOSS_WINDOW:
            check_finite(step + 1)
    check_finite(plan.end)
    if not curves[0] or curves[0][-1].step < plan.end:
        record_eval(plan.end)
    wall = wall_before + time.monotonic() - started
    return [
        TrainOutcome(curve=curve, wall_time_s=wall, steps=plan.end - plan.start) for curve in curves
    ]
