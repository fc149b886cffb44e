"""The trained sparse model as ONNX, for serving it outside PyTorch.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, with
onnxscript): in torch 2.14 the TorchScript exporter (``dynamo=False``) still runs but warns that
it is deprecated and will be removed, while this one exports every built-in architecture and the
torchvision models tried (SqueezeNet, MobileNet-v3, ShuffleNet-v2, GoogLeNet, Swin-T, MaxViT-T)
with a symbolic batch dimension. ``python -m bench.onnx_check`` measures how close onnxruntime
comes to PyTorch on each built-in architecture.

The graph takes ``input`` — a float32 batch of any size, normalised exactly as the engine feeds
``trained.safetensors`` — and returns ``logits``. Pruned weights are zeros in its initializers.
A model the exporter cannot trace (Python control flow on tensor values, an operator without an
ONNX mapping) is not an error of the job: the result says ``skipped`` and why, and no file is
left behind. The file is written beside its final name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from worker.engine.tensorio import atomic_path

#: ONNX opset of the exported graph: torch 2.14's native one, run by onnxruntime >= 1.17.
OPSET = 20
INPUT = "input"
OUTPUT = "logits"
#: Examples the graph is traced with: torch.export specialises a batch of 1 to a constant.
_TRACE_BATCH = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ExportResult:
    """What an export did: ``exported`` (with the file) or ``skipped`` (with the reason)."""

    status: str
    path: Path | None
    seconds: float
    reason: str | None = None

    def info(self) -> dict[str, object]:
        """The payload of the run's ``export`` event."""
        info: dict[str, object] = {
            "format": "onnx",
            "status": self.status,
            "seconds": round(self.seconds, 3),
        }
        if self.path is not None:
            info["file"] = self.path.name
            info["opset"] = OPSET
        if self.reason is not None:
            info["reason"] = self.reason
        return info

    def to_json(self) -> dict[str, object]:
        path = None if self.path is None else str(self.path)
        return {"status": self.status, "path": path, "seconds": self.seconds, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportResult:
        path = None if data["path"] is None else Path(data["path"])
        return cls(data["status"], path, float(data["seconds"]), data["reason"])


def export_model(
    model: nn.Module,
    state: Mapping[str, Tensor] | None,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Write ``model`` (with ``state`` loaded, in eval mode, on the CPU) to ``path`` as ONNX.

    ``model`` itself is left untouched, and so is the global RNG, so exporting cannot change
    anything the run computes after it. Any exporter failure comes back as ``skipped``; an
    earlier file at ``path`` is removed then, so the file and the result always agree.
    """
    started = time.monotonic()
    try:
        with torch.random.fork_rng(devices=[]):
            program = _program(model, state, input_shape)
        program.model.metadata_props.update(metadata or {})
        with atomic_path(path) as tmp:
            program.save(tmp, external_data=False)
            _check(tmp)
    except Exception as error:
        path.unlink(missing_ok=True)
        return ExportResult("skipped", None, time.monotonic() - started, _reason(error))
    return ExportResult("exported", path, time.monotonic() - started)


def _program(
    model: nn.Module, state: Mapping[str, Tensor] | None, input_shape: tuple[int, ...]
) -> torch.onnx.ONNXProgram:
    net = copy.deepcopy(model).cpu().eval()
    if state is not None:
        net.load_state_dict({key: value.cpu() for key, value in state.items()})
    example = torch.zeros(_TRACE_BATCH, *input_shape)
    with torch.no_grad():
        program = torch.onnx.export(
            net,
            (example,),
            None,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    if program is None:  # only the TorchScript exporter returns nothing
        raise RuntimeError("the exporter returned no program")
    return program


def _check(path: Path) -> None:
    """The ONNX checker on the written file: a graph onnxruntime would refuse never lands; nor
    does one whose batch size the exporter fixed (its fallbacks specialise a dimension that
    the model's code reads as a number), which would serve batches of one size only."""
    import onnx

    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise RuntimeError(
            f"the exporter fixed the batch size at {batch.dim_value}: the model's forward reads "
            "the batch size as a number (x.shape[0] in arithmetic, a reshape to a given size)"
        )


def _reason(error: BaseException) -> str:
    """The root cause in one line: the exporter wraps it in pages of advice."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = _ANSI.sub("", str(root)).strip()
    line = text.splitlines()[0] if text else ""
    reason = f"{type(root).__name__}: {line}" if line else type(root).__name__
    return reason[:300]
