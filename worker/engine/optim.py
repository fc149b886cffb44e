"""Optimizers and learning-rate schedules.

The learning rate is a pure function of the step (``Schedule.lr_at``) that the training loop writes
into the optimizer before every step: nothing about the schedule needs saving in a checkpoint, and
replaying a schedule from the rewind step (learning-rate rewinding) is just starting at that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer

from api_schemas.spec import TrainingSpec
from api_schemas.steps import to_iterations


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up to ``lr``, then constant, step-wise decay or cosine decay to zero."""

    lr: float
    kind: str
    total: int
    warmup: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    @classmethod
    def from_spec(cls, training: TrainingSpec, iterations_per_epoch: int) -> Schedule:
        def its(step: str) -> int:
            return to_iterations(step, iterations_per_epoch)

        return cls(
            lr=training.lr,
            kind=training.schedule,
            total=its(training.steps),
            warmup=its(training.warmup),
            milestones=tuple(sorted(its(m) for m in training.milestones)),
            gamma=training.gamma,
        )

    def lr_at(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "multistep":
            return self.lr * self.gamma ** sum(step >= m for m in self.milestones)
        if self.kind == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = min(max(step - self.warmup, 0) / span, 1.0)
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr

    def final_lr(self) -> float:
        """The rate at the last step: fine-tuning's default constant rate (Renda et al. 2020)."""
        return self.lr_at(max(self.total - 1, 0))


def constant(lr: float, total: int) -> Schedule:
    return Schedule(lr=lr, kind="constant", total=total)


class LeanAdam(torch.optim.Adam):
    """torch's fused Adam (and AdamW) with its per-step Python bookkeeping done once.

    ``Adam.step`` regroups every tensor by device and dtype and re-reads every state on every
    step, which for a small network costs about as much as the fused kernel itself (0.5 ms a
    step for LeNet-300-100 on one core), and more so for the many tensors of a stacked
    training. After the first step (which torch's own code runs, creating the state) this calls
    the same kernel with the same arguments on cached lists, so the numbers are identical.
    """

    _lean: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]

    def _lean_ready(self) -> bool:
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        plain = group["fused"] and not (
            group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
        )
        params: list[torch.Tensor] = group["params"]
        if not plain or any(p not in self.state for p in params):
            return False
        if not hasattr(self, "_lean") or self._lean[0] != params:
            states = [self.state[p] for p in params]
            self._lean = (
                list(params),
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
            )
        return True

    def step(self, closure: Any = None) -> Any:
        if self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_hooks():
            return _hooked_step(self, closure)
        return self._lean_step(closure)

    # torch wraps an optimizer class's ``step`` in a profiler span and a pass over the step
    # hooks when its first instance is made; marked as wrapped, this one skips both unless a
    # hook is registered (the span cost 5% of a LeNet step alone and 12% with two lanes, whose
    # other lane waits for the GIL it holds).
    step.hooked = True  # type: ignore[attr-defined]

    @torch.no_grad()
    def _lean_step(self, closure: Any = None) -> Any:
        if closure is not None or not self._lean_ready():
            return _adam_step(self, closure)
        params, exp_avgs, exp_avg_sqs, steps = self._lean
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return _adam_step(self)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        kernel(
            params,
            grads,  # type: ignore[arg-type]
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if hasattr(self, "_lean"):
            del self._lean


def _global_hooks() -> bool:
    return bool(_torch_optimizer._global_optimizer_pre_hooks) or bool(
        _torch_optimizer._global_optimizer_post_hooks
    )


#: torch's own ``Adam.step`` without the wrapper it gets once an ``Adam`` exists: ``LeanAdam``
#: runs the hooks itself (or has them run around ``_lean_step``), never twice.
_adam_step = getattr(torch.optim.Adam.step, "__wrapped__", torch.optim.Adam.step)
#: ``LeanAdam.step`` as torch would have wrapped it, for when step hooks are registered.
_hooked_step = torch.optim.Optimizer.profile_hook_step(LeanAdam._lean_step)


def build_optimizer(
    params: Iterable[torch.Tensor], training: TrainingSpec
) -> torch.optim.Optimizer:
    """The spec's optimizer; its learning rate is overwritten every step from the schedule.

    The fused implementation is used where torch has one for these parameters (about 30% faster
    for LeNet on CPU than the per-tensor default), else torch's default.
    """
    params = list(params)
    kwargs: dict[str, Any]
    optimizer_class: type[torch.optim.Optimizer]
    if training.optimizer == "sgd":
        optimizer_class = torch.optim.SGD
        kwargs = {
            "momentum": training.momentum,
            "nesterov": training.nesterov and training.momentum > 0,
        }
    else:
        optimizer_class = LeanAdam
        kwargs = {"decoupled_weight_decay": training.optimizer == "adamw"}
    kwargs |= {"lr": training.lr, "weight_decay": training.weight_decay}
    try:
        return optimizer_class(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return optimizer_class(params, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
