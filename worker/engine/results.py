"""Turning a training curve into a round's numbers, and choosing the winning ticket."""

from __future__ import annotations

import statistics

from api_schemas.results import RoundResult, Variant, VariantResult, VariantStats
from worker.engine.train import TrainOutcome


def summarize(variant: str, outcome: TrainOutcome) -> VariantResult:
    """Final and early-stopping metrics of one training.

    The early-stopping step is the evaluation of minimum validation loss (the paper's criterion,
    on held-out training data, never on the test set); without a validation split there is none.
    """
    curve = outcome.curve
    final = curve[-1]
    validated = [p for p in curve if p.val_loss is not None]
    best = min(validated, key=lambda p: (p.val_loss, p.step)) if validated else None
    accuracy = best.test_accuracy if best is not None else final.test_accuracy
    selection = (
        best.val_accuracy if best is not None and best.val_accuracy is not None else accuracy
    )
    variant_name: Variant = variant  # type: ignore[assignment]
    return VariantResult(
        variant=variant_name,
        final_test_accuracy=final.test_accuracy,
        final_test_loss=final.test_loss,
        early_stop_step=best.step if best is not None else None,
        early_stop_test_accuracy=best.test_accuracy if best is not None else None,
        early_stop_val_accuracy=best.val_accuracy if best is not None else None,
        min_val_loss=best.val_loss if best is not None else None,
        accuracy=accuracy,
        selection_accuracy=selection,
        train_steps=outcome.steps,
        wall_time_s=outcome.wall_time_s,
        curve=curve,
    )


def variant_stats(results: list[VariantResult]) -> VariantStats:
    """Mean and population standard deviation of one network's numbers over replicates."""

    def mean_std(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0

    accuracy = mean_std([r.accuracy for r in results])
    selection = mean_std([r.selection_accuracy for r in results])
    final = mean_std([r.final_test_accuracy for r in results])
    steps = [float(r.early_stop_step) for r in results if r.early_stop_step is not None]
    early = mean_std(steps) if len(steps) == len(results) else (None, None)
    return VariantStats(
        variant=results[0].variant,
        n=len(results),
        accuracy_mean=accuracy[0],
        accuracy_std=accuracy[1],
        selection_accuracy_mean=selection[0],
        selection_accuracy_std=selection[1],
        final_test_accuracy_mean=final[0],
        final_test_accuracy_std=final[1],
        early_stop_step_mean=early[0],
        early_stop_step_std=early[1],
    )


def selection_accuracy(result: RoundResult) -> float:
    """What a round is judged by: the ticket's mean validation accuracy over replicates."""
    stats = result.stats_of("ticket")
    assert stats is not None  # every round has a ticket
    return stats.selection_accuracy_mean


def winning_round(results: list[RoundResult], tolerance: float) -> RoundResult:
    """The sparsest round whose selection accuracy is within ``tolerance`` of the dense net's.

    Selection uses validation accuracy when a split was held out, so the choice never peeks at
    the test set, averaged over replicates. Round 0 (the dense net) wins when no pruned round
    qualifies.
    """
    dense = selection_accuracy(results[0])
    qualifying = [r for r in results if selection_accuracy(r) >= dense - tolerance - 1e-12]
    return min(qualifying, key=lambda r: (r.density, -r.round))
