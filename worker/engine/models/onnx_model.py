"""A user's own architecture: an ONNX graph turned into a trainable plain-torch module.

Why ONNX, converted here rather than by a library or taken as a ``torch.export`` program:

* ``torch.export`` (``.pt2``) programs expose no ``nn.Linear``/``nn.Conv2d`` modules (the engine
  finds prunable layers by module type), their batch norm and dropout are fixed to the mode they
  were exported in (``.train()``/``.eval()`` on the unflattened module is refused), and the
  archive may carry pickled constants, which this service never loads.
* ``onnx2torch`` converted an MLP exactly but failed on torchvision's resnet18 and
  mobilenet_v3_small: the exporter stores identical tensors once (zero biases, zero running
  means) and feeds the other uses through ``Identity`` nodes, and its Conv and BatchNormalization
  converters need an initializer directly (``KeyError``); an eval-mode export with constant
  folding folds batch norm into the convolutions (no batch norm left to train); a training-mode
  export has batch norm with running-statistics outputs, which it refuses; and its parameters are
  named ``initializers.onnx_initializer_N``, not like the user's layers.
* Reading ONNX needs only protobuf, never pickle; external data (tensors in side files a path
  would name) is refused.

So the graph is interpreted here over a fixed set of operators (:data:`SUPPORTED_OPS`, the set
the service checks at upload). Convolutions become ``nn.Conv1d``/``nn.Conv2d``, ``Gemm`` and a
``MatMul`` by a constant matrix become ``nn.Linear``, batch normalization becomes a batch-norm
module and ``Dropout`` an ``nn.Dropout``, all named after the graph's weights: a layer exported
from ``layer1.0.conv1`` has the state-dict key ``layer1.0.conv1.weight``, as in the user's model.
Batch norm and dropout follow ``.train()``/``.eval()`` whatever mode the graph was exported in;
an export in training mode with ``do_constant_folding=False`` keeps both (an eval-mode export
drops dropout, and constant folding merges batch norm into the convolutions). Every other
floating-point initializer is a trainable parameter; ``Constant`` nodes are constants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

from worker.engine.errors import ModelError

#: Operators with a learnable module.
MODULE_OPS = frozenset({"Conv", "Gemm", "MatMul", "BatchNormalization", "Dropout"})
#: Every operator the converter runs (the service refuses any other at upload).
SUPPORTED_OPS: frozenset[str]

_Op = Callable[[list[Any], dict[str, Any]], Any]
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pool_pads(pads: Sequence[int], rank: int) -> tuple[int, ...] | None:
    """ONNX begin/end pads as symmetric torch padding, or None when they differ."""
    begin, end = tuple(pads[:rank]), tuple(pads[rank:])
    return begin if begin == end else None


def _pad_input(x: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
    rank = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [int(pads[axis]), int(pads[axis + rank])]
    return F.pad(x, torch_pads, value=value)


def _pool(kind: str) -> _Op:
    def run(inputs: list[Any], a: dict[str, Any]) -> Tensor:
        x = inputs[0]
        kernel = list(a["kernel_shape"])
        rank = len(kernel)
        strides = list(a.get("strides", [1] * rank))
        pads = list(a.get("pads", [0] * 2 * rank))
        symmetric = _pool_pads(pads, rank)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            dilations = list(a.get("dilations", [1] * rank))
            if symmetric is None:
                x, symmetric = _pad_input(x, pads, float("-inf")), (0,) * rank
            fn = F.max_pool1d if rank == 1 else F.max_pool2d
            return fn(x, kernel, strides, symmetric, dilations, ceil_mode=ceil)
        include = bool(a.get("count_include_pad", 0))
        if symmetric is None:
            x, symmetric = _pad_input(x, pads), (0,) * rank
        avg = F.avg_pool1d if rank == 1 else F.avg_pool2d
        return avg(x, kernel, strides, symmetric, ceil_mode=ceil, count_include_pad=include)

    return run


def _axes(inputs: list[Any], a: dict[str, Any]) -> list[int] | None:
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(v) for v in inputs[1].tolist()]
    return list(a["axes"]) if "axes" in a else None


def _reduce_mean(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    axes = _axes(inputs, a)
    keep = bool(a.get("keepdims", 1))
    x: Tensor = inputs[0]
    return x.mean(dim=axes, keepdim=keep) if axes else x.mean().reshape([1] * x.dim() * keep)


def _unsqueeze(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    x: Tensor = inputs[0]
    for axis in sorted(_axes(inputs, a) or []):
        x = x.unsqueeze(axis)
    return x


def _squeeze(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    axes = _axes(inputs, a)
    x: Tensor = inputs[0]
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axis % x.dim() for axis in axes))


def _reshape(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    x, shape = inputs[0], [int(v) for v in inputs[1].tolist()]
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if n == 0 else n for i, n in enumerate(shape)]
    out: Tensor = x.reshape(shape)
    return out


def _flatten(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    """ONNX Flatten: a 2-D (d0 * ... * d[axis-1], d[axis] * ...) view, axis in [-rank, rank].
    Flattened without reading sizes, so the batch stays symbolic when the model is exported."""
    x: Tensor = inputs[0]
    axis = int(a.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return x.reshape(1, -1)
    leading = x.flatten(0, axis - 1)
    return leading.flatten(1) if leading.dim() > 1 else leading.unsqueeze(1)


def _clip(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else a.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else a.get("max")
    return torch.clamp(inputs[0], low, high)


def _gather(inputs: list[Any], a: dict[str, Any]) -> Tensor:
    x, index = inputs[0], inputs[1].long()
    axis = int(a.get("axis", 0))
    picked = x.index_select(axis, index.reshape(-1) % x.shape[axis])
    out: Tensor = picked.reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1 :])
    return out


_FUNCTIONS: dict[str, _Op] = {
    "Identity": lambda i, a: i[0],
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "Tanh": lambda i, a: torch.tanh(i[0]),
    "HardSigmoid": lambda i, a: torch.clamp(
        a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0
    ),
    "HardSwish": lambda i, a: F.hardswish(i[0]),
    "Clip": _clip,
    "Softmax": lambda i, a: F.softmax(i[0], dim=a.get("axis", -1)),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda i, a: i[0].permute(*a.get("perm", list(reversed(range(i[0].dim()))))),
    "Concat": lambda i, a: torch.cat([t for t in i if t is not None], dim=a["axis"]),
    "Shape": lambda i, a: torch.tensor(i[0].shape, dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
}
SUPPORTED_OPS = frozenset({*_FUNCTIONS, *MODULE_OPS, "Constant"})


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over dimension 1 of an input of any rank (ONNX does not say which kind)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch norm needs (N, C, ...) inputs, got {input.dim()}-D")


class _Step:
    """One node: a module (by name) or a function, with its inputs and outputs."""

    def __init__(
        self,
        node: onnx.NodeProto,
        inputs: list[str],
        module: str | None = None,
        fn: _Op | None = None,
    ) -> None:
        self.op = node.op_type
        self.inputs = inputs
        self.outputs = [name for name in node.output]
        self.module = module
        self.fn = fn
        self.attrs = _attrs(node)


class OnnxModule(nn.Module):
    """The converted graph. ``forward`` runs its steps in order over a dict of values."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        super().__init__()
        self._names: dict[str, str] = {}  # state-dict key -> graph value (for exporting back)
        self._constants: dict[str, Tensor] = {}
        self._params: dict[str, str] = {}  # graph value -> parameter attribute
        self._steps: list[_Step] = []
        values = _constant_values(graph)
        initializers = {init.name for init in graph.initializer}
        used: set[str] = set()
        graph_inputs = [i.name for i in graph.input if i.name not in initializers]
        if len(graph_inputs) != 1 or len(graph.output) != 1:
            raise ModelError(
                f"the graph has {len(graph_inputs)} inputs and {len(graph.output)} outputs; "
                "a classifier here takes one input tensor and returns one tensor of logits"
            )
        self.input_name, self.output_name = graph_inputs[0], graph.output[0].name
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant" or (
                node.op_type == "Identity" and node.output[0] in values
            ):
                continue
            step = self._step(index, node, values, used)
            self._steps.append(step)
        for name, tensor in values.items():
            if name in used or not any(name in s.inputs for s in self._steps):
                continue
            if tensor.is_floating_point() and _is_initializer(name, graph, initializers):
                attr = self._free_name(name, "param")
                self.register_parameter(attr, nn.Parameter(tensor.clone()))
                self._names[attr] = name
                self._params[name] = attr
            else:
                attr = self._free_name(name, "const")
                self.register_buffer(attr, tensor.clone(), persistent=False)
                self._constants[name] = tensor
                self._params[name] = attr

    # ---- building -----------------------------------------------------------------------------

    def _step(
        self, index: int, node: onnx.NodeProto, values: dict[str, Tensor], used: set[str]
    ) -> _Step:
        op, inputs, a = node.op_type, list(node.input), _attrs(node)
        where = f"node {index} ({op} {node.name or node.output[0]!r})"
        if op not in SUPPORTED_OPS or (node.domain not in ("", "ai.onnx")):
            raise ModelError(f"unsupported operator {op!r} at {where}")
        if op == "Conv" and inputs[1] in values:
            weight = values[inputs[1]]
            bias = values.get(inputs[2]) if len(inputs) > 2 and inputs[2] else None
            module = _conv(weight, bias, a, where)
            name = self._add_module(inputs[1], module, f"conv{index}")
            used.update(v for v in inputs[1:3] if v)
            self._record(name, module, inputs[1], inputs[2] if bias is not None else None)
            return _Step(node, inputs[:1], module=name)
        if op == "Gemm" and len(inputs) > 1 and inputs[1] in values:
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise ModelError(f"unsupported Gemm attributes at {where}: only transB is")
            weight = values[inputs[1]] if a.get("transB", 0) else values[inputs[1]].t()
            bias = values.get(inputs[2]) if len(inputs) > 2 and inputs[2] else None
            if bias is not None and bias.dim() != 1:
                raise ModelError(f"a Gemm bias must be one value per output at {where}")
            module = _linear(weight, bias)
            name = self._add_module(inputs[1], module, f"linear{index}")
            used.update(v for v in inputs[1:3] if v)
            self._record(name, module, inputs[1], inputs[2] if bias is not None else None)
            return _Step(node, inputs[:1], module=name)
        if op == "MatMul" and inputs[1] in values and values[inputs[1]].dim() == 2:
            module = _linear(values[inputs[1]].t(), None)
            name = self._add_module(inputs[1], module, f"linear{index}")
            used.add(inputs[1])
            self._record(name, module, inputs[1], None, transposed=True)
            return _Step(node, inputs[:1], module=name)
        if op == "BatchNormalization":
            if not all(v in values for v in inputs[1:5]):
                raise ModelError(f"batch norm needs constant scale, bias, mean, variance: {where}")
            module = _batch_norm([values[v] for v in inputs[1:5]], a)
            name = self._add_module(inputs[1], module, f"bn{index}")
            used.update(inputs[1:5])
            for attr, value in zip(_BN_KEYS, inputs[1:5], strict=True):
                self._names[f"{name}.{attr}"] = value
            return _Step(node, inputs[:1], module=name)
        if op == "Dropout":
            ratio = values.get(inputs[1]) if len(inputs) > 1 and inputs[1] else None
            p = float(ratio) if ratio is not None else float(a.get("ratio", 0.5))
            name = self._add_module(None, nn.Dropout(p), f"dropout{index}")
            return _Step(node, inputs[:1], module=name)
        if op in MODULE_OPS:
            raise ModelError(f"{op} at {where} needs constant weights (an initializer)")
        return _Step(node, inputs, fn=_FUNCTIONS[op])

    def _record(
        self,
        name: str,
        module: nn.Module,
        weight: str,
        bias: str | None,
        transposed: bool = False,
    ) -> None:
        self._names[f"{name}.weight"] = weight + ("^T" if transposed else "")
        if bias is not None:
            self._names[f"{name}.bias"] = bias

    def _add_module(self, weight: str | None, module: nn.Module, fallback: str) -> str:
        """Register ``module`` at the path its weight's name gives (``a.b.weight`` -> ``a.b``),
        creating containers on the way; the fallback name where that is taken or unusable."""
        path = _module_path(weight)
        if path and self._can_place(path):
            parent: nn.Module = self
            for part in path[:-1]:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(path[-1], module)
            return ".".join(path)
        name = self._free_name(fallback, "layer")
        self.add_module(name, module)
        return name

    def _can_place(self, path: list[str]) -> bool:
        parent: nn.Module = self
        for depth, part in enumerate(path):
            taken = part in parent._modules or part in parent._parameters or hasattr(parent, part)
            if depth == len(path) - 1:
                return not taken
            if not taken:
                return True
            child = parent._modules.get(part)
            if child is None or type(child) is not nn.Module:
                return False
            parent = child
        return False

    def _free_name(self, name: str, prefix: str) -> str:
        base = re.sub(r"\W", "_", name).strip("_") or prefix
        if base[0].isdigit():
            base = f"{prefix}_{base}"
        candidate, n = base, 1
        while hasattr(self, candidate):
            candidate, n = f"{base}_{n}", n + 1
        return candidate

    # ---- running ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Any] = {self.input_name: x}
        for value, attr in self._params.items():
            env[value] = getattr(self, attr)
        for step in self._steps:
            args = [env[name] if name else None for name in step.inputs]
            if step.module is not None:
                out = self.get_submodule(step.module)(args[0])
            else:
                assert step.fn is not None
                out = step.fn(args, step.attrs)
            env[step.outputs[0]] = out
            if step.op == "Dropout" and len(step.outputs) > 1 and step.outputs[1]:
                env[step.outputs[1]] = torch.ones_like(out, dtype=torch.bool)
        result: Tensor = env[self.output_name]
        return result

    def graph_names(self) -> dict[str, str]:
        """State-dict key -> the graph value it came from (``^T``: stored transposed there)."""
        return dict(self._names)


def _module_path(weight: str | None) -> list[str] | None:
    if weight is None:
        return None
    parts = weight.split(".")
    if len(parts) < 2 or parts[-1] != "weight":
        return None
    path = parts[:-1]
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+", part) for part in path):
        return None
    return path


def _is_initializer(name: str, graph: onnx.GraphProto, initializers: set[str]) -> bool:
    if name in initializers:
        return True
    return any(n.op_type == "Identity" and n.output[0] == name for n in graph.node)


def _constant_values(graph: onnx.GraphProto) -> dict[str, Tensor]:
    """Initializers, ``Constant`` outputs and ``Identity`` copies of either, by value name."""
    values: dict[str, Tensor] = {}
    for init in graph.initializer:
        values[init.name] = _tensor(init)
    for node in graph.node:
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" not in a:
                raise ModelError(f"unsupported Constant form {sorted(a)} ({node.output[0]!r})")
            values[node.output[0]] = _tensor(a["value"])
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _tensor(proto: onnx.TensorProto) -> Tensor:
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelError(f"tensor {proto.name!r} is stored outside the file (external data)")
    array = numpy_helper.to_array(proto)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array, copy=True))


def _conv(weight: Tensor, bias: Tensor | None, a: dict[str, Any], where: str) -> nn.Module:
    rank = weight.dim() - 2
    if rank not in (1, 2) or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise ModelError(f"only 1-D and 2-D convolutions with explicit pads are supported: {where}")
    pads = list(a.get("pads", [0] * 2 * rank))
    symmetric = _pool_pads(pads, rank)
    if symmetric is None:
        raise ModelError(f"asymmetric convolution padding {pads} is not supported: {where}")
    groups = int(a.get("group", 1))
    cls: Any = nn.Conv1d if rank == 1 else nn.Conv2d
    conv: nn.Conv1d | nn.Conv2d = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(a.get("strides", [1] * rank)),
        padding=symmetric,
        dilation=tuple(a.get("dilations", [1] * rank)),
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None and conv.bias is not None:
            conv.bias.copy_(bias)
    return conv


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _batch_norm(tensors: list[Tensor], a: dict[str, Any]) -> nn.Module:
    scale, shift, mean, var = tensors
    bn = _BatchNorm(
        scale.shape[0],
        eps=round(float(a.get("epsilon", 1e-5)), 9),
        momentum=round(1 - float(a.get("momentum", 0.9)), 6),
    )
    assert bn.weight is not None and bn.bias is not None
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.weight.copy_(scale)
        bn.bias.copy_(shift)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return bn


def read_onnx(data: bytes) -> onnx.ModelProto:
    """Parse and check an ONNX model (protobuf only; external data refused)."""
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as error:  # protobuf's DecodeError, onnx's ValidationError
        raise ModelError(f"not a valid ONNX model: {str(error).strip()[:300]}") from error
    return proto


def load_onnx_model(path: Path) -> OnnxModule:
    """The trainable module of the ONNX file at ``path``; ModelError says what is unsupported."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read the model file: {error}") from error
    proto = read_onnx(data)
    if proto.functions or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in proto.graph.node
        for a in node.attribute
    ):
        raise ModelError("graphs with local functions or subgraphs (If, Loop) are not supported")
    module = OnnxModule(proto.graph)
    module.float()
    return module
