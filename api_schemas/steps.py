"""Training lengths written as ``'500it'`` (iterations) or ``'20ep'`` (epochs), as in open_lth.

A step string is kept as written in the spec (so a stored spec reads like the submitted one) and
converted to iterations only once the dataset size, hence the iterations per epoch, is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

_STEP_RE = re.compile(r"\s*([0-9]+)\s*(it|ep)\s*", re.ASCII)


@dataclass(frozen=True)
class StepCount:
    """A parsed step string: ``amount`` iterations or epochs."""

    amount: int
    unit: str  # "it" or "ep"

    @classmethod
    def parse(cls, text: str) -> StepCount:
        match = _STEP_RE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a step count: write a whole number of iterations or epochs, "
                "like '500it' or '20ep'"
            )
        return cls(int(match.group(1)), match.group(2))

    def iterations(self, iterations_per_epoch: int) -> int:
        """The number of iterations this count stands for."""
        if self.unit == "it":
            return self.amount
        return self.amount * iterations_per_epoch

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


def _normalise(text: str) -> str:
    return str(StepCount.parse(text))


Step = Annotated[
    str,
    AfterValidator(_normalise),
    Field(
        description="A length of training: a whole number followed by 'it' (iterations) or 'ep' "
        "(epochs of the training split), e.g. '500it' or '20ep'.",
        examples=["500it", "20ep"],
    ),
]


def to_iterations(step: str, iterations_per_epoch: int) -> int:
    """Convert a step string to iterations for a dataset with ``iterations_per_epoch``."""
    return StepCount.parse(step).iterations(iterations_per_epoch)


def comparable(a: str, b: str) -> bool:
    """Whether two step strings can be ordered without knowing the dataset size."""
    return StepCount.parse(a).unit == StepCount.parse(b).unit
