"""How a caller watches, steers and feeds a run: a progress callback, a cooperative stop check,
a thread budget and a store of reusable trainings. The engine imports nothing of its callers;
they hand it these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


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
    # "step", "eval", "variant_done", "round_done", "reused" or "execution"; the last two carry
    # their details in ``info``.
    event: str = "step"
    info: dict[str, object] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
#: How many CPU threads the run may use now; polled while training (about once a second), so a
#: job alone on a machine can take the cores another job just gave back.
ThreadsFn = Callable[[], int]


class TrainingCache(Protocol):
    """Finished trainings of earlier runs, by the hash of everything that determined them.

    ``lookup`` returns the files of a training with that key (name → readable path), or None;
    ``publish`` offers this run's files for a key once they are complete. Implementations decide
    who may see what (the service: one tenant's own jobs only).
    """

    def lookup(self, key: str) -> Mapping[str, Path] | None: ...

    def publish(self, key: str, files: Mapping[str, Path]) -> None: ...
