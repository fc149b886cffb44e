"""What a report shows, read from a run directory's JSON only (no torch, no engine).

``rounds.json`` is rewritten after every round, so a report can be drawn mid-run; the manifest
(written when the run ends) adds the winning ticket. Before it exists the header comes from
``spec.json``, which the engine writes when the run starts.

A run of several replicates (independent IMP chains) is shown as mean ± standard deviation;
files written before replicates existed have no ``stats`` and read as one replicate.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from api_schemas.results import RoundResult, RunSummary, VariantResult, VariantStats
from api_schemas.run_layout import MANIFEST, ROUNDS, SPEC
from api_schemas.spec import JobSpec

#: Controls in a fixed order, so colours and table columns never move between reports.
CONTROL_ORDER = ("random_reinit", "random_prune")

_rounds_adapter = TypeAdapter(list[RoundResult])


class ReportError(ValueError):
    """The run directory holds nothing to report yet (no rounds)."""


@dataclass(frozen=True)
class Point:
    """One network of one round over the replicates: the mean and its (population) standard
    deviation, 0 with a single replicate."""

    round: int
    density: float
    mean: float
    std: float


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation, as the engine computes ``VariantStats``."""
    return statistics.fmean(values), statistics.pstdev(values)


def variant_result(r: RoundResult, variant: str) -> VariantResult | None:
    """Replicate 0's result of ``variant`` in ``r``; None when it did not train that round."""
    return r.variant(variant)


def variant_stats(r: RoundResult, variant: str) -> VariantStats | None:
    """``r``'s statistics of ``variant`` over the replicates (see ``RoundResult.stats_of``)."""
    return r.stats_of(variant)


def min_val_loss(r: RoundResult) -> tuple[float, float] | None:
    """Mean and deviation of the ticket's minimum validation loss over the replicates (the
    engine keeps no statistic of it); None without a validation split."""
    losses = [rep.ticket.min_val_loss for rep in r.replicates] or [r.ticket.min_val_loss]
    known = [loss for loss in losses if loss is not None]
    return spread(known) if known else None


@dataclass(frozen=True)
class RunView:
    """A run as the report sees it: its rounds, spec and (once finished) its summary."""

    rounds: list[RoundResult]
    spec: dict[str, Any]
    spec_hash: str | None
    summary: RunSummary | None

    @property
    def controls(self) -> list[str]:
        present = {name for r in self.rounds for name in r.controls}
        return [c for c in CONTROL_ORDER if c in present] + sorted(present - set(CONTROL_ORDER))

    @property
    def dense(self) -> RoundResult:
        return self.rounds[0]

    @property
    def replicates(self) -> int:
        """How many independent IMP chains the run trained (1 for files without replicates)."""
        counts = [s.n for r in self.rounds for s in r.stats.values()]
        counts += [len(r.replicates) for r in self.rounds]
        if self.summary is not None:
            counts.append(self.summary.replicates)
        return max(counts, default=1)

    def accuracy(self, variant: str) -> list[Point]:
        """``variant``'s accuracy in each round it trained, over the replicates."""
        return [
            Point(r.round, r.density, s.accuracy_mean, s.accuracy_std)
            for r in self.rounds
            if (s := variant_stats(r, variant)) is not None
        ]

    def early_stop(self, variant: str) -> list[Point]:
        """``variant``'s early-stopping step in each round that has one, over the replicates."""
        return [
            Point(r.round, r.density, s.early_stop_step_mean, s.early_stop_step_std or 0.0)
            for r in self.rounds
            if (s := variant_stats(r, variant)) is not None and s.early_stop_step_mean is not None
        ]

    @property
    def ticket_round(self) -> RoundResult | None:
        if self.summary is None:
            return None
        return next((r for r in self.rounds if r.round == self.summary.ticket_round), None)

    def field(self, *path: str) -> Any:
        """A spec value by path (``field("model", "arch")``), None when absent."""
        value: Any = self.spec
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _hash(spec: dict[str, Any]) -> str | None:
    try:
        return JobSpec.model_validate(spec).spec_hash()
    except ValidationError:
        return None


def load_run(run_dir: Path) -> RunView:
    """Read ``run_dir``; raises :class:`ReportError` when no round has finished yet."""
    rounds = sorted(
        _rounds_adapter.validate_python(_read(run_dir / ROUNDS) or []), key=lambda r: r.round
    )
    if not rounds:
        raise ReportError(f"{run_dir} has no finished round (rounds.json is missing or empty)")
    manifest = _read(run_dir / MANIFEST)
    manifest = manifest if isinstance(manifest, dict) else {}
    spec = manifest.get("spec") or _read(run_dir / SPEC) or {}
    summary = manifest.get("summary")
    return RunView(
        rounds=rounds,
        spec=spec if isinstance(spec, dict) else {},
        spec_hash=manifest.get("spec_hash") or _hash(spec),
        summary=RunSummary.model_validate(summary) if summary else None,
    )
