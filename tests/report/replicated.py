"""Rounds of a run with three replicates, with known numbers, written as the engine writes them:
replicate 0's results at the top level, every replicate in ``replicates`` and their mean and
population standard deviation in ``stats``. The report and client tests read them."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from api_schemas.results import (
    EvalPoint,
    ReplicateRound,
    RoundResult,
    RunSummary,
    Variant,
    VariantResult,
    VariantStats,
)

DENSITIES = (1.0, 0.8, 0.64)
PRUNABLE = 10_000
SEEDS = (0, 1_000_003, 2_000_006)
#: accuracy[variant][round] → the accuracy of replicates 0, 1 and 2.
ACCURACY: dict[Variant, dict[int, tuple[float, float, float]]] = {
    "ticket": {0: (0.90, 0.91, 0.92), 1: (0.91, 0.93, 0.92), 2: (0.88, 0.92, 0.90)},
    "random_reinit": {1: (0.89, 0.90, 0.88), 2: (0.84, 0.86, 0.80)},
    "random_prune": {1: (0.87, 0.88, 0.86), 2: (0.82, 0.81, 0.83)},
}
#: early_stop[variant][round] → the early-stopping step of replicates 0, 1 and 2.
EARLY_STOP: dict[Variant, dict[int, tuple[int, int, int]]] = {
    "ticket": {0: (40, 60, 60), 1: (40, 40, 40), 2: (20, 40, 60)},
    "random_reinit": {1: (60, 60, 40), 2: (60, 60, 60)},
    "random_prune": {1: (40, 60, 60), 2: (60, 40, 60)},
}
#: The ticket's minimum validation loss per round, replicates 0, 1 and 2.
MIN_VAL_LOSS = {0: (0.30, 0.32, 0.34), 1: (0.28, 0.30, 0.29), 2: (0.33, 0.31, 0.35)}
TICKET_ROUND = 1  # mean validation accuracy 0.925 beats round 0's 0.915 and round 2's 0.905
SPEC: dict[str, Any] = {
    "name": "three replicates",
    "model": {"arch": "mlp", "hidden_sizes": [24]},
    "dataset": {"uri": "synthetic://?classes=4&shape=1,6,6&train=400&test=200"},
    "seed": 0,
    "replicates": 3,
}


def _result(variant: Variant, round_: int, replicate: int) -> VariantResult:
    accuracy = ACCURACY[variant][round_][replicate]
    stop = EARLY_STOP[variant][round_][replicate]
    val_loss = MIN_VAL_LOSS[round_][replicate] if variant == "ticket" else 0.4
    curve = [
        EvalPoint(
            step=step,
            train_loss=1.0 / (1 + step),
            val_loss=val_loss + abs(step - stop) / 200,
            val_accuracy=accuracy + 0.005,
            test_loss=val_loss + 0.02,
            test_accuracy=accuracy - 0.01 * abs(step - stop) / 20,
        )
        for step in (0, 20, 40, 60)
    ]
    return VariantResult(
        variant=variant,
        final_test_accuracy=accuracy - 0.002,
        final_test_loss=val_loss + 0.03,
        early_stop_step=stop,
        early_stop_test_accuracy=accuracy,
        early_stop_val_accuracy=accuracy + 0.005,
        min_val_loss=val_loss,
        accuracy=accuracy,
        selection_accuracy=accuracy + 0.005,
        train_steps=60,
        wall_time_s=1.5 + replicate,
        curve=curve,
    )


def _stats(results: list[VariantResult]) -> VariantStats:
    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}

    accuracy = spread([r.accuracy for r in results])
    selection = spread([r.selection_accuracy for r in results])
    final = spread([r.final_test_accuracy for r in results])
    stop = spread([float(r.early_stop_step or 0) for r in results])
    return VariantStats(
        variant=results[0].variant,
        n=len(results),
        accuracy_mean=accuracy["mean"],
        accuracy_std=accuracy["std"],
        selection_accuracy_mean=selection["mean"],
        selection_accuracy_std=selection["std"],
        final_test_accuracy_mean=final["mean"],
        final_test_accuracy_std=final["std"],
        early_stop_step_mean=stop["mean"],
        early_stop_step_std=stop["std"],
    )


def replicated_rounds() -> list[RoundResult]:
    """Rounds 0 (dense), 1 and 2 of a run of three replicates, with both controls."""
    rounds = []
    for k, density in enumerate(DENSITIES):
        variants: list[Variant] = [v for v in ACCURACY if k in ACCURACY[v]]
        per_replicate = [
            {v: _result(v, k, replicate) for v in variants} for replicate in range(len(SEEDS))
        ]
        remaining = round(density * PRUNABLE)
        layers = {"fc1.weight": density, "fc2.weight": min(1.0, density + 0.1)}
        replicates = [
            ReplicateRound(
                replicate=i,
                seed=seed,
                density=density,
                remaining_weights=remaining,
                layer_density=layers,
                ticket=results["ticket"],
                controls={v: r for v, r in results.items() if v != "ticket"},
            )
            for i, (seed, results) in enumerate(zip(SEEDS, per_replicate, strict=True))
        ]
        rounds.append(
            RoundResult(
                round=k,
                density=density,
                remaining_weights=remaining,
                prunable_weights=PRUNABLE,
                layer_density=layers,
                ticket=replicates[0].ticket,
                controls=replicates[0].controls,
                stats={v: _stats([results[v] for results in per_replicate]) for v in variants},
                replicates=replicates,
            )
        )
    return rounds


def summary() -> RunSummary:
    """The engine's summary of :func:`replicated_rounds`: means over the replicates."""
    ticket, dense = ACCURACY["ticket"][TICKET_ROUND], ACCURACY["ticket"][0]
    return RunSummary(
        ticket_round=TICKET_ROUND,
        ticket_density=DENSITIES[TICKET_ROUND],
        ticket_accuracy=statistics.fmean(ticket),
        dense_accuracy=statistics.fmean(dense),
        ticket_accuracy_std=statistics.pstdev(ticket),
        dense_accuracy_std=statistics.pstdev(dense),
        replicates=len(SEEDS),
        rounds_completed=len(DENSITIES) - 1,
        stop_reason="rounds",
    )


def without_replicates(rounds: list[RoundResult]) -> list[dict[str, Any]]:
    """The same rounds as a file written before replicates existed: no stats, no replicates."""
    return [r.model_dump(mode="json", exclude={"stats", "replicates"}) for r in rounds]


def write_run(folder: Path) -> Path:
    """A finished run directory of :func:`replicated_rounds` (rounds.json and manifest.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    rounds = [r.model_dump(mode="json") for r in replicated_rounds()]
    (folder / "rounds.json").write_text(json.dumps(rounds))
    manifest = {"spec": SPEC, "summary": summary().model_dump(mode="json")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
