"""Reading a finished run back (its rounds, its manifest, the winning ticket in one call), and
writing the compact copies of its ticket and trained model that deployments download."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from api_schemas import run_layout
from api_schemas.results import RoundResult, RunSummary
from api_schemas.run_layout import MANIFEST, Manifest
from api_schemas.sparse_tensors import load_sparse, save_sparse
from api_schemas.spec import JobSpec
from worker.engine.errors import EngineError
from worker.engine.models import build_model
from worker.engine.paths import RunPaths
from worker.engine.tensorio import atomic_path, load_tensors, read_json, sha256_file

#: What ``load_ticket`` can load, and the file each one is.
_FILES = {
    "ticket": run_layout.TICKET,
    "trained": run_layout.TRAINED,
    "dense": run_layout.DENSE,
    "ticket.sparse": run_layout.TICKET_SPARSE,
    "trained.sparse": run_layout.TRAINED_SPARSE,
}
LOADABLE = tuple(_FILES)


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


def load_manifest(out_dir: Path) -> Manifest:
    path = RunPaths(out_dir).manifest
    if not path.exists():
        raise EngineError(f"{out_dir} has no {MANIFEST}: the run has not finished")
    return Manifest.read(path)


def verify(out_dir: Path) -> list[str]:
    """Names of artifacts whose size or sha256 differs from the manifest (empty when intact)."""
    bad = []
    for entry in load_manifest(out_dir).artifacts:
        path = out_dir / entry.name
        if (
            not path.exists()
            or path.stat().st_size != entry.size
            or sha256_file(path) != entry.sha256
        ):
            bad.append(entry.name)
    return bad


def load_ticket(out_dir: Path, which: str = "ticket") -> Ticket:
    """Build the spec's model and load the winning ticket (``which="ticket"``: the weights at the
    rewind point with the mask applied), the trained sparse model (``"trained"``) or the dense one
    (``"dense"``); ``"ticket.sparse"`` and ``"trained.sparse"`` read the same weights from the
    compact files."""
    if which not in LOADABLE:
        raise ValueError(f"which must be one of {', '.join(map(repr, LOADABLE))}")
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    spec = JobSpec.model_validate(manifest.spec)
    shape = tuple(manifest.model.input_shape)
    model = build_model(spec.model, shape, manifest.model.num_classes)
    path = out_dir / _FILES[which]
    if which.endswith(".sparse"):
        state, mask = load_sparse_state(path)
    else:
        state, mask = load_tensors(path), load_tensors(RunPaths(out_dir).final_mask)
    model.load_state_dict(state)
    return Ticket(model=model, mask=mask, summary=manifest.summary)


def save_sparse_state(path: Path, state: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> None:
    """Write ``state`` as a compact file (``api_schemas.sparse_tensors``), atomically."""
    arrays = {key: value.detach().cpu().contiguous().numpy() for key, value in state.items()}
    masks = {key: value.detach().cpu().to(torch.bool).numpy() for key, value in mask.items()}
    with atomic_path(path) as tmp:
        save_sparse(tmp, arrays, masks)


def load_sparse_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A compact file's dense state dict and masks as CPU tensors (pruned entries exactly 0)."""
    state, masks = load_sparse(path)
    return _tensors(state), _tensors(masks)


def _tensors(arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Tensor]:
    return {key: torch.from_numpy(np.require(a, requirements="W")) for key, a in arrays.items()}


def save_compact(paths: RunPaths, mask: Mapping[str, Tensor]) -> None:
    """Compact copies of a chain's ``ticket.safetensors`` and ``trained.safetensors``, both
    pruned by ``mask`` (the winning round's)."""
    save_sparse_state(paths.ticket_sparse, load_tensors(paths.ticket), mask)
    save_sparse_state(paths.trained_sparse, load_tensors(paths.final_trained), mask)
