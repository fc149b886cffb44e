"""Reading a finished run back: its rounds, its manifest, and the winning ticket in one call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from api_schemas.results import RoundResult, RunSummary
from api_schemas.spec import JobSpec
from worker.engine.errors import EngineError
from worker.engine.models import build_model
from worker.engine.paths import RunPaths
from worker.engine.tensorio import load_tensors, read_json, sha256_file


@dataclass(frozen=True)
class Ticket:
    """A winning ticket: the model holding the ticket's weights, and its mask."""

    model: nn.Module
    mask: dict[str, Tensor]
    summary: RunSummary


def load_rounds(out_dir: Path) -> list[RoundResult]:
    path = RunPaths(out_dir).rounds
    if not path.exists():
        return []
    return [RoundResult.model_validate(r) for r in read_json(path)]


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = RunPaths(out_dir).manifest
    if not path.exists():
        raise EngineError(f"{out_dir} has no manifest.json: the run has not finished")
    manifest: dict[str, Any] = read_json(path)
    return manifest


def verify(out_dir: Path) -> list[str]:
    """Names of artifacts whose size or sha256 differs from the manifest (empty when intact)."""
    manifest = load_manifest(out_dir)
    bad = []
    for entry in manifest["artifacts"]:
        path = out_dir / entry["name"]
        if (
            not path.exists()
            or path.stat().st_size != entry["size"]
            or sha256_file(path) != entry["sha256"]
        ):
            bad.append(entry["name"])
    return bad


def load_ticket(out_dir: Path, which: str = "ticket") -> Ticket:
    """Build the spec's model and load the winning ticket (``which="ticket"``: the weights at the
    rewind point with the mask applied) or the trained sparse model (``which="trained"``)."""
    if which not in ("ticket", "trained", "dense"):
        raise ValueError("which must be 'ticket', 'trained' or 'dense'")
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    spec = JobSpec.model_validate(manifest["spec"])
    shape = tuple(manifest["model"]["input_shape"])
    model = build_model(spec.model, shape, manifest["model"]["num_classes"])
    model.load_state_dict(load_tensors(out_dir / f"{which}.safetensors"))
    return Ticket(
        model=model,
        mask=load_tensors(RunPaths(out_dir).final_mask),
        summary=RunSummary.model_validate(manifest["summary"]),
    )
