"""How a caller watches and stops a run: a progress callback and a cooperative stop check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """Where a run stands. ``fraction`` counts training steps over every network of every round."""

    round: int
    rounds_total: int
    variant: str
    step: int
    steps_total: int
    fraction: float
    metrics: dict[str, float] = field(default_factory=dict)
    event: str = "step"  # "step", "eval", "variant_done" or "round_done"


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
