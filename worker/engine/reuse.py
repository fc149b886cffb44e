"""Keys of trainings, so that a run can take a training another run already did.

A training's key hashes everything that determines its result: the model, the starting weights'
file hash, the chain's seed, the dataset fingerprint (data, split, preprocessing), the training
settings, the rewind step, the pruning settings of every round up to it and the engine version.
Round k's ticket key chains round k-1's, so a job that only prunes differently shares the dense
round, and a job with more rounds than a finished one shares every round the other ran.
Settings that cannot change the numbers (checkpoint spacing, device choice, how many rounds to
run, stop rules, controls, ticket tolerance, labels) are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from api_schemas.spec import JobSpec


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def dense_key(
    spec: JobSpec,
    *,
    chain_seed: int,
    weights_sha256: str | None,
    dataset_fingerprint: str,
    rewind_step: int,
    engine_version: str,
) -> str:
    """Round 0's key. The rewind step counts only when a snapshot is taken there (> 0)."""
    model = spec.model.model_dump(mode="json", exclude={"weights"})
    training = spec.training.model_dump(mode="json", exclude={"checkpoint_every", "device"})
    return _digest(
        "dense",
        engine_version,
        model,
        weights_sha256,
        chain_seed,
        dataset_fingerprint,
        training,
        rewind_step if rewind_step > 0 else 0,
    )


def round_key(previous: str, spec: JobSpec, rewind_step: int) -> str:
    """Round k's ticket key from round k-1's and the settings of this pruning step."""
    pruning = spec.pruning
    step = {
        "strategy": pruning.strategy,
        "rates": pruning.rates.model_dump(mode="json"),
        "rate": pruning.rate,
        "exclude": sorted(pruning.exclude),
        "one_shot": pruning.one_shot,
        "target_density": pruning.target_density if pruning.one_shot else None,
        "retrain": pruning.retrain,
        "finetune_lr": pruning.finetune_lr,
        "rewind_step": rewind_step,
    }
    return _digest("round", previous, step)


def variant_key(ticket_key: str, variant: str) -> str:
    """A control of a round: its ticket's key and which control."""
    return ticket_key if variant == "ticket" else _digest("control", ticket_key, variant)


def copy_into(files: Mapping[str, Path], targets: Mapping[str, Path]) -> bool:
    """Copy (hard-link where possible) each named file to its target; all or nothing. Returns
    whether every target now holds its file."""
    if not set(targets) <= set(files):
        return False
    written: list[Path] = []
    try:
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.reuse")
            partial.unlink(missing_ok=True)
            try:
                os.link(files[name], partial)
            except OSError:
                shutil.copyfile(files[name], partial)
            written.append(partial)
        for (_, target), partial in zip(targets.items(), written, strict=True):
            partial.replace(target)
    except OSError:
        for partial in written:
            partial.unlink(missing_ok=True)
        return False
    return True
