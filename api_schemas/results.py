"""What a finished round reports: densities and, for the ticket and each control, its metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Variant = Literal["ticket", "random_reinit", "random_prune"]


class EvalPoint(BaseModel):
    """One evaluation during training. Validation fields are null when nothing was held out."""

    model_config = ConfigDict(extra="forbid")

    step: int
    train_loss: float | None = Field(default=None, description="Mean loss since the last eval.")
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float
    test_accuracy: float


class VariantResult(BaseModel):
    """How one network of a round trained: the ticket or one of its controls."""

    model_config = ConfigDict(extra="forbid")

    variant: Variant
    final_test_accuracy: float
    final_test_loss: float
    early_stop_step: int | None = Field(
        description="Step of minimum validation loss (null without a validation split)."
    )
    early_stop_test_accuracy: float | None
    early_stop_val_accuracy: float | None
    min_val_loss: float | None
    accuracy: float = Field(
        description="The accuracy this round is judged by: test accuracy at the early-stopping "
        "step when a validation split exists, else the final test accuracy."
    )
    selection_accuracy: float = Field(
        description="The accuracy the winning ticket is chosen by: validation accuracy at the "
        "early-stopping step, else the final test accuracy."
    )
    train_steps: int
    wall_time_s: float
    curve: list[EvalPoint]


class RoundResult(BaseModel):
    """Round 0 is the dense network; round k ≥ 1 the k-th pruned subnetwork."""

    model_config = ConfigDict(extra="forbid")

    round: int
    density: float = Field(description="Fraction of prunable weights remaining.")
    remaining_weights: int
    prunable_weights: int
    layer_density: dict[str, float]
    ticket: VariantResult
    controls: dict[str, VariantResult] = Field(default_factory=dict)


class RunSummary(BaseModel):
    """The outcome of a whole job: which round is the winning ticket and how good it is."""

    model_config = ConfigDict(extra="forbid")

    ticket_round: int
    ticket_density: float
    ticket_accuracy: float
    dense_accuracy: float
    rounds_completed: int
    stop_reason: str
