"""Starting weights from a safetensors file: never pickle, and never a partial or silent load."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError
from torch import nn

from worker.engine.errors import ModelError

#: How many offending keys of each kind an error message lists.
SHOWN = 5


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; its keys and shapes must be exactly the model's state dict."""
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        raise ModelError(f"cannot read weights file {path} as safetensors: {error}") from error
    expected = model.state_dict()
    problems = []
    if missing := [key for key in expected if key not in tensors]:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected := [key for key in tensors if key not in expected]:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    mismatched = [
        f"{key} (file {list(tensors[key].shape)}, model {list(value.shape)})"
        for key, value in expected.items()
        if key in tensors and tensors[key].shape != value.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches {_listed(mismatched)}")
    if problems:
        raise ModelError(
            f"weights file {path} does not fit the model: {'; '.join(problems)}; "
            "its keys and shapes must match the model's state dict exactly"
        )
    model.load_state_dict(tensors, strict=True)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
