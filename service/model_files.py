"""Validate an uploaded model without running or unpickling anything in it.

An ONNX model is protobuf: it is parsed and checked with ``onnx`` (no torch in the service),
tensors stored outside the file (external data, which names other paths) are refused, and every
operator must be one the engine converts (:data:`SUPPORTED_OPS`, the engine's list in
``worker.engine.models.onnx_model``). Safetensors weights are checked by their header alone; their
keys and shapes are matched against the architecture when a job builds it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from api_schemas.jobs import ModelFormat

#: What the engine converts; kept equal to the engine's list by a test.
SUPPORTED_OPS = frozenset(
    {
        *("Conv", "Gemm", "MatMul", "BatchNormalization", "Dropout", "Constant", "Identity"),
        *("Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"),
        *("HardSwish", "Clip", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool"),
        *("ReduceMean", "Flatten", "Reshape", "Transpose", "Concat", "Shape", "Gather"),
        *("Unsqueeze", "Squeeze"),
    }
)
#: Largest safetensors header read (the library's own cap is 100 MB).
MAX_HEADER_BYTES = 16 * 1024 * 1024
WEIGHT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


class InvalidModelError(ValueError):
    """Why an upload is refused; ``kind`` becomes the field error's type."""

    def __init__(self, message: str, kind: str = "invalid_model") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ModelInfo:
    """What validation learned about a model file (stored with its row)."""

    parameters: int
    input_shape: list[int] | None = None
    operators: list[str] = field(default_factory=list)
    tensors: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "input_shape": self.input_shape,
            "operators": self.operators,
            "tensors": self.tensors,
        }


def inspect_model(path: Path, format: ModelFormat) -> ModelInfo:
    """Validate an ``onnx`` or ``safetensors`` upload; InvalidModelError says what is wrong."""
    if format == "onnx":
        return _inspect_onnx(path.read_bytes())
    return _inspect_safetensors(path)


def _inspect_onnx(data: bytes) -> ModelInfo:
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise InvalidModelError(f"not an ONNX model: {error}", "malformed") from error
    graph = proto.graph
    tensors = [*graph.initializer]
    tensors += [
        a.t for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    external = [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise InvalidModelError(
            f"tensors stored outside the file (external data) are not accepted: {external[:5]}; "
            "export with the weights inside the .onnx file",
            "external_data",
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as error:
        message = str(error).strip().splitlines()[0][:300]
        raise InvalidModelError(f"not a valid ONNX model: {message}", "malformed") from error
    if proto.functions:
        raise InvalidModelError("model-local functions are not supported", "unsupported_construct")
    for index, node in enumerate(graph.node):
        where = f"node {index} ({node.name or node.output[0]!r})"
        if node.domain not in ("", "ai.onnx"):
            raise InvalidModelError(
                f"unsupported operator {node.domain}.{node.op_type} at {where}",
                "unsupported_operator",
            )
        if node.op_type not in SUPPORTED_OPS:
            raise InvalidModelError(
                f"unsupported operator {node.op_type!r} at {where}; supported: "
                f"{', '.join(sorted(SUPPORTED_OPS))}",
                "unsupported_operator",
            )
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise InvalidModelError(
                f"subgraphs are not supported ({where})", "unsupported_construct"
            )
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InvalidModelError(
            f"the graph has {len(inputs)} inputs and {len(graph.output)} outputs; a classifier "
            "here takes one input tensor and returns one tensor of logits",
            "unsupported_construct",
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims[1:]]
    parameters = sum(math.prod(init.dims) for init in graph.initializer if _is_float(init))
    return ModelInfo(
        parameters=parameters,
        input_shape=shape if shape and all(n > 0 for n in shape) else None,
        operators=sorted({node.op_type for node in graph.node}),
        tensors=len(graph.initializer),
    )


def _is_float(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    )


def _inspect_safetensors(path: Path) -> ModelInfo:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InvalidModelError(
                "safetensors: shorter than its 8-byte header length", "malformed"
            )
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise InvalidModelError(
                f"safetensors: a header of {length:,} bytes does not fit the file", "malformed"
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            message = f"safetensors: the header is not JSON ({error})"
            raise InvalidModelError(message, "malformed") from error
    if not isinstance(header, dict):
        raise InvalidModelError("safetensors: the header is not a JSON object", "malformed")
    header.pop("__metadata__", None)
    if not header:
        raise InvalidModelError("safetensors: the file holds no tensors", "malformed")
    parameters, end = 0, 0
    for key, entry in header.items():
        parameters += _entry_values(key, entry)
        end = max(end, entry["data_offsets"][1])
    if end != size - 8 - length:
        raise InvalidModelError(
            f"safetensors: the header declares {end:,} bytes of data but the file holds "
            f"{size - 8 - length:,}",
            "malformed",
        )
    return ModelInfo(parameters=parameters, tensors=len(header))


def _entry_values(key: str, entry: Any) -> int:
    """Values of one header entry, checked: a floating-point dtype, a shape, matching offsets."""
    if not isinstance(entry, dict):
        raise InvalidModelError(f"safetensors: the entry of {key!r} is not an object", "malformed")
    dtype = entry.get("dtype")
    shape: Any = entry.get("shape")
    offsets: Any = entry.get("data_offsets")
    if dtype not in WEIGHT_DTYPES:
        raise InvalidModelError(
            f"safetensors: {key!r} has dtype {dtype!r}; weights must be one of "
            f"{', '.join(WEIGHT_DTYPES)}",
            "unsupported_dtype",
        )
    ints = isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
    pair = isinstance(offsets, list) and len(offsets) == 2
    if not ints or not pair or not all(isinstance(n, int) and n >= 0 for n in offsets):
        raise InvalidModelError(f"safetensors: malformed shape or offsets of {key!r}", "malformed")
    values: int = math.prod(shape)
    if offsets[1] - offsets[0] != values * WEIGHT_DTYPES[dtype]:
        raise InvalidModelError(
            f"safetensors: {key!r} declares shape {shape} of {dtype} but its offsets hold "
            f"{offsets[1] - offsets[0]:,} bytes",
            "malformed",
        )
    return values
