"""Mid-round checkpoints that make a resumed run identical to an uninterrupted one.

A checkpoint holds what open_lth's lacks: besides the model and optimizer, every RNG state (CPU and
CUDA) and the loop's own bookkeeping. The data order needs no state: batches are a pure function of
(seed, step). All of it is one safetensors file: tensors as tensors, the rest as JSON metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from worker.engine.tensorio import load_metadata, load_tensors, save_tensors

_MODEL = "model."
_OPTIM = "optim."
_RNG_CPU = "rng.cpu"
_RNG_CUDA = "rng.cuda."


@dataclass
class LoopState:
    """The training loop's bookkeeping, saved as JSON beside the tensors."""

    step: int
    curves: list[list[dict[str, Any]]] = field(default_factory=list)  # one per sibling
    loss_count: int = 0
    wall_time_s: float = 0.0


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: LoopState,
    loss_sum: Tensor,
) -> None:
    tensors: dict[str, Tensor] = {_MODEL + k: v for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim_state["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{_OPTIM}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors[_RNG_CPU] = torch.get_rng_state()
    if torch.cuda.is_available():
        for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG_CUDA}{device_index}"] = state
    tensors["loop.loss_sum"] = loss_sum.detach().reshape(-1)
    metadata = {
        "loop": loop.__dict__,
        "param_groups": optim_state["param_groups"],
        "optim_scalars": scalars,
    }
    save_tensors(path, tensors, metadata)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[LoopState, Tensor]:
    """Restore model, optimizer and RNG states in place; returns the loop state and the
    siblings' loss sums since the last evaluation."""
    tensors = load_tensors(path)
    metadata = load_metadata(path)
    model.load_state_dict(
        {k.removeprefix(_MODEL): v for k, v in tensors.items() if k.startswith(_MODEL)}
    )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            index, name = key.removeprefix(_OPTIM).split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in metadata["optim_scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})
    torch.set_rng_state(tensors[_RNG_CPU])
    cuda_states = sorted(k for k in tensors if k.startswith(_RNG_CUDA))
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda_states])
    loss_sum = tensors["loop.loss_sum"].to(device).reshape(-1)
    return LoopState(**metadata["loop"]), loss_sum
