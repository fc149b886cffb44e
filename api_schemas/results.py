"""What a finished round reports: densities and, for the ticket and each control, its metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Variant = Literal["ticket", "random_reinit", "random_prune"]


class EvalPoint(BaseModel):
    """One evaluation during training. Validation fields are null when nothing was held out."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(description="Training iteration of this evaluation.")
    train_loss: float | None = Field(default=None, description="Mean loss since the last eval.")
    val_loss: float | None = Field(default=None, description="Mean loss on the held-out split.")
    val_accuracy: float | None = Field(default=None, description="Accuracy on the held-out split.")
    test_loss: float = Field(description="Mean cross-entropy on the test split.")
    test_accuracy: float = Field(description="Accuracy on the test split.")


class VariantResult(BaseModel):
    """How one network of a round trained: the ticket or one of its controls."""

    model_config = ConfigDict(extra="forbid")

    variant: Variant = Field(description="The ticket or the control this is.")
    final_test_accuracy: float = Field(description="Test accuracy at the last step.")
    final_test_loss: float = Field(description="Test loss at the last step.")
    early_stop_step: int | None = Field(
        description="Step of minimum validation loss (null without a validation split)."
    )
    early_stop_test_accuracy: float | None = Field(
        description="Test accuracy at the early-stopping step."
    )
    early_stop_val_accuracy: float | None = Field(
        description="Validation accuracy at the early-stopping step."
    )
    min_val_loss: float | None = Field(description="The minimum validation loss.")
    accuracy: float = Field(
        description="The accuracy this round is judged by: test accuracy at the early-stopping "
        "step when a validation split exists, else the final test accuracy."
    )
    selection_accuracy: float = Field(
        description="The accuracy the winning ticket is chosen by: validation accuracy at the "
        "early-stopping step, else the final test accuracy."
    )
    train_steps: int = Field(description="Iterations trained (from the rewind step to the end).")
    wall_time_s: float = Field(description="Seconds spent training and evaluating.")
    curve: list[EvalPoint] = Field(description="Every evaluation, in step order.")


class RoundResult(BaseModel):
    """Round 0 is the dense network; round k ≥ 1 the k-th pruned subnetwork."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(description="0 for the dense network, k for the k-th pruning round.")
    density: float = Field(description="Fraction of prunable weights remaining.")
    remaining_weights: int = Field(description="Prunable weights remaining.")
    prunable_weights: int = Field(description="Prunable weights in all (excluded layers aside).")
    layer_density: dict[str, float] = Field(description="Density of each prunable weight.")
    ticket: VariantResult = Field(description="The pruned network trained from its rewind point.")
    controls: dict[str, VariantResult] = Field(
        default_factory=dict, description="The controls trained this round, by name."
    )


class RunSummary(BaseModel):
    """The outcome of a whole job: which round is the winning ticket and how good it is."""

    model_config = ConfigDict(extra="forbid")

    ticket_round: int = Field(description="The round whose subnetwork is the winning ticket.")
    ticket_density: float = Field(description="Fraction of prunable weights the ticket keeps.")
    ticket_accuracy: float = Field(description="The ticket round's accuracy.")
    dense_accuracy: float = Field(description="The dense network's accuracy.")
    rounds_completed: int = Field(description="Pruning rounds run after the dense round.")
    stop_reason: str = Field(description="Why pruning stopped.")
