"""Turning a training curve into a round's numbers, and choosing the winning ticket."""

from __future__ import annotations

from api_schemas.results import RoundResult, Variant, VariantResult
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


def winning_round(results: list[RoundResult], tolerance: float) -> RoundResult:
    """The sparsest round whose selection accuracy is within ``tolerance`` of the dense net's.

    Selection uses validation accuracy when a split was held out, so the choice never peeks at
    the test set. Round 0 (the dense net) wins when no pruned round qualifies.
    """
    dense = results[0].ticket.selection_accuracy
    qualifying = [r for r in results if r.ticket.selection_accuracy >= dense - tolerance - 1e-12]
    return min(qualifying, key=lambda r: (r.density, -r.round))
