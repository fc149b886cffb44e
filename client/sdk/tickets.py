"""Using a finished job's ticket: its masks, the model with the mask applied, and a mask applied
to any module.

Torch is imported only by the calls that return or take a module, so the SDK (and
``Client.masks``, which needs numpy and safetensors alone) works where torch is not installed.
The architecture of a ticket is the engine's own definition (``worker.engine.models``), built for
the input shape and class count the run recorded in its ``manifest.json``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from api_schemas import run_layout
from api_schemas.jobs import Artifact, Job
from api_schemas.spec import ModelSpec
from client.sdk.errors import JobNotSucceeded, MaskMismatch, UnexpectedResponse

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch import Tensor, nn

    Masks = dict[str, npt.NDArray[Any]]

#: The compact artifacts (``api_schemas.sparse_tensors``) and the run's record of its model.
TICKET_FILE = run_layout.TICKET_SPARSE
TRAINED_FILE = run_layout.TRAINED_SPARSE
MASK_FILE = run_layout.MASK
MANIFEST_FILE = run_layout.MANIFEST


def require_succeeded(job: Job) -> None:
    """Only a succeeded job has a ticket: anything else is a :class:`JobNotSucceeded`."""
    if job.status != "succeeded":
        raise JobNotSucceeded(job)


@contextmanager
def folder(dest: Path | None) -> Iterator[Path]:
    """``dest`` (downloads stay there, and are not fetched again while intact), or a temporary
    folder removed afterwards."""
    if dest is not None:
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="lth-ticket-") as tmp:
        yield Path(tmp)


def read_sparse(path: Path) -> tuple[Masks, Masks]:
    """The dense state dict and the masks of a compact file, as numpy arrays."""
    from api_schemas.sparse_tensors import load_sparse

    try:
        return load_sparse(path)
    except ValueError as exc:
        raise UnexpectedResponse(f"{path.name} is not a valid compact state dict: {exc}") from exc


def mask_source(job_id: str, artifacts: list[Artifact]) -> Artifact:
    """The smaller file holding the winning masks: ``mask.safetensors`` (a byte per weight) or
    the compact ticket (values too, but only the survivors': smaller below about 22% density)."""
    by_name = {a.name: a for a in artifacts}
    found = [by_name[name] for name in (TICKET_FILE, MASK_FILE) if name in by_name]
    if not found:
        raise UnexpectedResponse(f"job {job_id} has neither {TICKET_FILE} nor {MASK_FILE}")
    return min(found, key=lambda a: a.size)


def read_masks(path: Path) -> Masks:
    """The bool masks, keyed like the state dict (``"fc1.weight"``), of ``mask.safetensors`` or
    of a compact file."""
    if path.name != MASK_FILE:
        return read_sparse(path)[1]
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        masks = load_file(str(path))
    except (SafetensorError, TypeError) as exc:
        raise UnexpectedResponse(f"{MASK_FILE} is not a readable safetensors file: {exc}") from exc
    not_bool = sorted(key for key, value in masks.items() if value.dtype.name != "bool")
    if not_bool:
        raise UnexpectedResponse(f"{MASK_FILE}: {', '.join(not_bool)} are not bool tensors")
    return masks


def _model_of(manifest_path: Path) -> tuple[ModelSpec, tuple[int, ...], int]:
    """The job's model spec, input shape and class count, from its manifest."""
    try:
        manifest = run_layout.Manifest.read(manifest_path)
        spec = ModelSpec.model_validate(manifest.spec.get("model"))
        shape = tuple(manifest.model.input_shape)
        classes = manifest.model.num_classes
    except (OSError, ValidationError) as exc:
        raise UnexpectedResponse(
            f"{MANIFEST_FILE} does not say which model the job built: {exc!r}"
        ) from exc
    return spec, shape, classes


def build_module(
    manifest_path: Path, sparse_path: Path, into: nn.Module | None = None
) -> nn.Module:
    """A compact file's weights, its mask applied, in ``into`` (your own module, whose state-dict
    names are the job's: an uploaded model keeps its layers' names) or else in the job's
    built-in architecture, built here."""
    import torch

    spec, shape, classes = _model_of(manifest_path)
    state, masks = read_sparse(sparse_path)
    if into is None:
        if spec.uri is not None:
            raise UnexpectedResponse(
                "the job pruned your own uploaded model, which only you can build: pass an "
                "instance of it as into= (or use masks() and apply_mask)"
            )
        from worker.engine.models import build_model

        into = build_model(spec, shape, classes)
    try:
        into.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    except RuntimeError as exc:
        raise MaskMismatch(
            f"{sparse_path.name} does not fit the {type(into).__name__}: {exc}"
        ) from exc
    return apply_mask(into, masks)


def _parameter(module: nn.Module, key: str) -> tuple[nn.Module, str, Tensor]:
    """The module owning state-dict entry ``key``, the parameter's name there, and the tensor to
    zero (``<name>_orig`` of a parameter already pruned with ``torch.nn.utils.prune``)."""
    prefix, _, name = key.rpartition(".")
    try:
        owner = module.get_submodule(prefix)
    except AttributeError:
        owner = None
    params = dict(owner.named_parameters(recurse=False)) if owner is not None else {}
    found = params.get(name, params.get(f"{name}_orig"))
    if owner is None or found is None:
        names = [n.removesuffix("_orig") for n, _ in module.named_parameters()]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise MaskMismatch(
            f"the mask names {key!r}, which the {type(module).__name__} has no parameter called "
            f"(it has: {shown or 'none'}); mask keys are state-dict names such as 'fc1.weight'"
        )
    return owner, name, found


def apply_mask(
    module: nn.Module,
    mask: Mapping[str, npt.NDArray[Any] | Tensor],
    *,
    keep_pruned: bool = False,
) -> nn.Module:
    """Zero the pruned weights of ``module`` in place and return it.

    ``mask`` maps state-dict names (``"fc1.weight"``) to bool arrays or tensors of the weight's
    shape, True where a weight survives. With ``keep_pruned`` the mask is also registered with
    ``torch.nn.utils.prune.custom_from_mask``, so the pruned weights stay zero while you train the
    module further (the weight becomes ``<name>_orig`` times the buffer ``<name>_mask``; call
    ``torch.nn.utils.prune.remove`` to make it plain again). Every key and shape is checked
    before anything changes: a key the module lacks or a shape that differs is a
    :class:`MaskMismatch`.
    """
    import torch
    from torch.nn.utils import prune

    resolved = []
    for key, value in mask.items():
        owner, name, param = _parameter(module, key)
        keep = torch.as_tensor(value)
        if tuple(keep.shape) != tuple(param.shape):
            raise MaskMismatch(
                f"the mask of {key!r} has shape {tuple(keep.shape)}, "
                f"the module's weight {tuple(param.shape)}"
            )
        resolved.append((owner, name, param, keep.to(device=param.device, dtype=torch.bool)))
    with torch.no_grad():
        for _, _, param, keep in resolved:
            param.masked_fill_(~keep, 0.0)
    if keep_pruned:
        for owner, name, _, keep in resolved:
            prune.custom_from_mask(owner, name, keep)  # type: ignore[no-untyped-call]
    return module
