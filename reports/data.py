"""What a report shows, read from a run directory's JSON only (no torch, no engine).

``rounds.json`` is rewritten after every round, so a report can be drawn mid-run; the manifest
(written when the run ends) adds the winning ticket. Before it exists the header comes from
``spec.json``, which the engine writes when the run starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from api_schemas.results import RoundResult, RunSummary
from api_schemas.spec import JobSpec

ROUNDS = "rounds.json"
MANIFEST = "manifest.json"
SPEC = "spec.json"
#: Controls in a fixed order, so colours and table columns never move between reports.
CONTROL_ORDER = ("random_reinit", "random_prune")

_rounds_adapter = TypeAdapter(list[RoundResult])


class ReportError(ValueError):
    """The run directory holds nothing to report yet (no rounds)."""


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
