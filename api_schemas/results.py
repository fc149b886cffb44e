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
    wall_time_s: float = Field(
        description="Seconds spent training and evaluating; for networks trained stacked, the "
        "time of the whole stack (shared by its networks)."
    )
    curve: list[EvalPoint] = Field(description="Every evaluation, in step order.")


class VariantStats(BaseModel):
    """One network of a round over every replicate: mean and (population) standard deviation.

    With one replicate the means are that replicate's numbers and the deviations are 0.
    """

    model_config = ConfigDict(extra="forbid")

    variant: Variant = Field(description="The ticket or the control these statistics are of.")
    n: int = Field(ge=1, description="Replicates the statistics are over.")
    accuracy_mean: float = Field(description="Mean of `accuracy`.")
    accuracy_std: float = Field(description="Standard deviation of `accuracy`.")
    selection_accuracy_mean: float = Field(
        description="Mean of `selection_accuracy`: what the winning ticket is chosen by."
    )
    selection_accuracy_std: float = Field(description="Standard deviation of it.")
    final_test_accuracy_mean: float = Field(description="Mean of `final_test_accuracy`.")
    final_test_accuracy_std: float = Field(description="Standard deviation of it.")
    early_stop_step_mean: float | None = Field(
        default=None, description="Mean early-stopping step (null without a validation split)."
    )
    early_stop_step_std: float | None = Field(default=None, description="Its deviation.")


class ReplicateRound(BaseModel):
    """One replicate's (one independent IMP chain's) part of a round."""

    model_config = ConfigDict(extra="forbid")

    replicate: int = Field(ge=0, description="0 is the job's own seed; 1.. are derived from it.")
    seed: int = Field(description="The seed this replicate's init and data order come from.")
    density: float = Field(description="Fraction of prunable weights this replicate keeps.")
    remaining_weights: int = Field(description="Prunable weights remaining.")
    layer_density: dict[str, float] = Field(description="Density of each prunable weight.")
    ticket: VariantResult = Field(description="This replicate's ticket.")
    controls: dict[str, VariantResult] = Field(
        default_factory=dict, description="This replicate's controls, by name."
    )


class RoundResult(BaseModel):
    """Round 0 is the dense network; round k ≥ 1 the k-th pruned subnetwork.

    The top-level numbers are replicate 0's (the job's own seed); ``stats`` summarises every
    replicate and ``replicates`` lists them all when the job ran more than one.
    """

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
    stats: dict[str, VariantStats] = Field(
        default_factory=dict,
        description="Mean and standard deviation over the replicates, by variant name "
        "('ticket', 'random_reinit', ...).",
    )
    replicates: list[ReplicateRound] = Field(
        default_factory=list,
        description="Every replicate's results (all of them, 0 included) when the job ran more "
        "than one; empty otherwise.",
    )

    def variant(self, name: str) -> VariantResult | None:
        """Replicate 0's result of the ticket or of a control (None if it did not run)."""
        return self.ticket if name == "ticket" else self.controls.get(name)

    def stats_of(self, name: str) -> VariantStats | None:
        """The statistics of a network over the replicates. A round without them (written
        before replicates existed) is one replicate: its own numbers, deviations 0."""
        if name in self.stats:
            return self.stats[name]
        result = self.variant(name)
        if result is None:
            return None
        stop = result.early_stop_step
        return VariantStats(
            variant=result.variant,
            n=1,
            accuracy_mean=result.accuracy,
            accuracy_std=0.0,
            selection_accuracy_mean=result.selection_accuracy,
            selection_accuracy_std=0.0,
            final_test_accuracy_mean=result.final_test_accuracy,
            final_test_accuracy_std=0.0,
            early_stop_step_mean=None if stop is None else float(stop),
            early_stop_step_std=None if stop is None else 0.0,
        )


class RunSummary(BaseModel):
    """The outcome of a whole job: which round is the winning ticket and how good it is."""

    model_config = ConfigDict(extra="forbid")

    ticket_round: int = Field(description="The round whose subnetwork is the winning ticket.")
    ticket_density: float = Field(description="Fraction of prunable weights the ticket keeps.")
    ticket_accuracy: float = Field(
        description="The ticket round's accuracy (the mean over replicates when there are several)."
    )
    dense_accuracy: float = Field(
        description="The dense network's accuracy (the mean over replicates)."
    )
    ticket_accuracy_std: float = Field(
        default=0.0, description="Standard deviation of the ticket's accuracy over replicates."
    )
    dense_accuracy_std: float = Field(
        default=0.0, description="Standard deviation of the dense accuracy over replicates."
    )
    replicates: int = Field(default=1, ge=1, description="Independent IMP chains the job ran.")
    rounds_completed: int = Field(description="Pruning rounds run after the dense round.")
    stop_reason: str = Field(description="Why pruning stopped.")
