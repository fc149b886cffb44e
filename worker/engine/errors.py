"""Errors the engine raises. Each message names the offending input and what would be accepted,
so the worker can hand it to the user unchanged."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error caused by the job's input rather than by a bug."""

    code = "engine_error"


class SpecError(EngineError):
    """The spec is valid on its own but impossible with this data or model."""

    code = "invalid_spec"


class DataError(EngineError):
    """A dataset is missing, corrupt, outside the data roots or inconsistent."""

    code = "invalid_dataset"


class ModelError(EngineError):
    """An architecture cannot be built for this input, or starting weights do not fit it."""

    code = "invalid_model"


class DivergedError(EngineError):
    """Training produced a non-finite loss: the learning rate (or the data) is unusable.

    ``step`` is the first step whose loss was not finite and ``sibling`` the network of a
    stacked training that diverged first, so the run can name the variant.
    """

    code = "diverged"

    def __init__(self, step: int, sibling: int = 0, detail: str = "") -> None:
        self.step, self.sibling, self.detail = step, sibling, detail
        super().__init__(f"loss became non-finite at step {step}{detail}; lower the learning rate")


class Stopped(Exception):  # noqa: N818 - a signal, not an error
    """The stop check asked the run to stop; everything up to the last checkpoint is saved."""
