"""Several networks of one architecture trained as one: every parameter gains a leading sibling
dimension, so one pass over a batch steps them all.

Siblings are folded into the channel (or feature) dimension of the activations: for S siblings a
conv net sees ``(B, S*C, H, W)``. Convolutions become grouped convolutions (``groups = S`` times
the layer's own), batch norm runs over the ``S*C`` channels so each sibling keeps its own
statistics, and element-wise layers, pooling, flattening and residual additions need no change at
all, so a model's own ``forward`` runs unmodified. Linear layers take the folded features (or the
``(S, B, F)`` output of a previous linear layer) and run one batched matmul.

Each sibling computes exactly what it would alone (up to float summation order), with its own
weights, statistics, mask and optimizer state: Adam and SGD are element-wise, and the loss is the
sum of the siblings' own mean losses, so each sibling's gradient is that of its own loss.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Modules that act on each element or each channel alone (or only reshape): unchanged under
#: folding. Anything else outside the stacked layer types makes a model fall back to one by one.
_NEUTRAL: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Sequential,
    nn.ModuleList,
)

#: Architectures whose own ``forward`` is known to keep siblings apart under folding.
STACKABLE_ARCHS = frozenset(
    {
        "lenet_300_100",
        "mlp",
        "conv2",
        "conv4",
        "conv6",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "resnet20",
        "resnet56",
    }
)


def _stacked_bias(siblings: Sequence[nn.Module], *, unsqueeze: bool) -> nn.Parameter | None:
    """The siblings' biases stacked (``(S, 1, out)`` for linear layers), or None without."""
    biases: list[Tensor | None] = [getattr(s, "bias", None) for s in siblings]
    if biases[0] is None:
        return None
    stacked = torch.stack([b.detach() for b in biases if b is not None])
    return nn.Parameter(stacked.unsqueeze(1) if unsqueeze else stacked)


class _BatchedLinear(torch.autograd.Function):
    """``x @ W^T + b`` per sibling, with the backward written as ``nn.Linear``'s is computed
    (the weight gradient as ``g^T @ x``, not transposed afterwards), so that gradients too are
    bit-identical to each layer's alone."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    @staticmethod
    # The backward runs under the autocast state of the forward.
    @torch.amp.custom_bwd(device_type="cuda")  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(dim=1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class StackedLinear(nn.Module):
    """S linear layers: weight ``(S, out, in)``, bias ``(S, 1, out)``; input ``(B, S*in)`` or
    ``(S, B, in)``, output ``(S, B, out)``. The batched matmul reads the weight transposed, as
    ``nn.Linear`` does, which makes each sibling's result bit-identical to the layer alone."""

    def __init__(self, siblings: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.size = len(siblings)
        self.in_features = siblings[0].in_features
        self.weight = nn.Parameter(torch.stack([s.weight.detach() for s in siblings]))
        self.bias = _stacked_bias(siblings, unsqueeze=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], self.size, self.in_features).transpose(0, 1)
        out: Tensor = _BatchedLinear.apply(x, self.weight, self.bias)
        return out


class StackedConv2d(nn.Module):
    """S 2-d convolutions as one grouped convolution over ``(B, S*C, H, W)``."""

    def __init__(self, siblings: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = siblings[0]
        self.size = len(siblings)
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.groups = first.groups * self.size
        self.weight = nn.Parameter(torch.stack([s.weight.detach() for s in siblings]))
        self.bias = _stacked_bias(siblings, unsqueeze=False)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(
            x,
            self.weight.flatten(0, 1),
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class StackedBatchNorm2d(nn.Module):
    """S batch norms over the folded ``S*C`` channels; parameters and running statistics are
    ``(S, C)``, each sibling's own. Follows ``nn.BatchNorm2d`` (momentum None = cumulative)."""

    def __init__(self, siblings: Sequence[nn.BatchNorm2d]) -> None:
        super().__init__()
        first = siblings[0]
        self.eps, self.momentum = first.eps, first.momentum

        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(s, name).detach() for s in siblings])

        self.weight = nn.Parameter(stacked("weight"))
        self.bias = nn.Parameter(stacked("bias"))
        self.register_buffer("running_mean", stacked("running_mean"))
        self.register_buffer("running_var", stacked("running_var"))
        tracked = first.num_batches_tracked
        assert tracked is not None  # stack_reason admits batch norms with running statistics
        self.register_buffer("num_batches_tracked", tracked.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        tracked: Tensor = self.num_batches_tracked  # type: ignore[assignment]
        if self.training:
            tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(tracked)
        mean: Tensor = self.running_mean  # type: ignore[assignment]
        var: Tensor = self.running_var  # type: ignore[assignment]
        return F.batch_norm(
            x,
            mean.view(-1),
            var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            factor,
            self.eps,
        )


def _unsupported(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"a Conv2d with padding {module.padding!r} / mode {module.padding_mode!r}"
        return None
    if isinstance(module, nn.BatchNorm2d):
        if not (module.affine and module.track_running_stats):
            return "a BatchNorm2d without affine parameters or running statistics"
        return None
    if isinstance(module, _NEUTRAL) or not isinstance(module, nn.Module):
        return None
    if any(True for _ in module.children()):
        return None  # a container: judged by its children and by the architecture check
    return f"a {type(module).__name__} layer"


def stack_reason(arch: str, model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked (None when it can)."""
    if arch not in STACKABLE_ARCHS:
        return f"{arch} is not a built-in architecture; its networks train one by one"
    for name, module in model.named_modules():
        reason = _unsupported(module)
        if reason is not None:
            return f"{arch} has {reason} at {name or 'the top'}; its networks train one by one"
    return None


def _stacked_layer(siblings: Sequence[nn.Module]) -> nn.Module | None:
    first = siblings[0]
    if isinstance(first, nn.Linear):
        return StackedLinear(siblings)  # type: ignore[arg-type]
    if isinstance(first, nn.Conv2d):
        return StackedConv2d(siblings)  # type: ignore[arg-type]
    if isinstance(first, nn.BatchNorm2d):
        return StackedBatchNorm2d(siblings)  # type: ignore[arg-type]
    return None


class StackedModel(nn.Module):
    """S copies of one architecture with their own weights, trained and evaluated together.

    ``forward`` takes a batch shared by all siblings, ``(B, *input)``, or one per sibling,
    ``(S, B, *input)``, and returns logits ``(S, B, classes)``. Parameter and buffer names are the
    single model's (``fc1.weight``), with a leading sibling dimension; ``sibling_state(i)`` and
    ``load_sibling(i, state)`` translate to and from a single model's state dict.
    """

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self._aliases: list[list[Tensor]] = []
        self._linear = {
            name for name, module in net.named_modules() if isinstance(module, StackedLinear)
        }

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> StackedModel:
        if not models:
            raise ValueError("a stack needs at least one model")
        net = copy.deepcopy(models[0])
        lookups = [dict(m.named_modules()) for m in models]
        for name in [name for name, _ in net.named_modules()]:
            if not name:
                continue
            stacked = _stacked_layer([lookup[name] for lookup in lookups])
            if stacked is not None:
                parent_name, _, child = name.rpartition(".")
                parent = net.get_submodule(parent_name) if parent_name else net
                setattr(parent, child, stacked)
        stack = cls(net, len(models))
        stack.train(models[0].training)
        return stack

    def forward(self, x: Tensor, per_sibling: bool = False) -> Tensor:
        """Logits ``(S, B, classes)`` of a shared batch ``(B, *input)``, or with ``per_sibling``
        of one batch per sibling ``(S, B, *input)``."""
        if per_sibling:
            folded = x.transpose(0, 1)  # (B, S, *input)
        else:
            folded = x.unsqueeze(1).expand(x.shape[0], self.size, *x.shape[1:])
        folded = folded.reshape(folded.shape[0], -1, *folded.shape[3:])
        out: Tensor = self.net(folded)
        if out.dim() == 2:  # the last layer was not linear: (B, S*K)
            out = out.view(out.shape[0], self.size, -1).transpose(0, 1)
        return out

    # ---- translating states -------------------------------------------------------------------

    def _is_linear_bias(self, key: str) -> bool:
        return key.endswith(".bias") and key.rpartition(".")[0] in self._linear

    def _from_single(self, key: str, value: Tensor) -> Tensor:
        if self._is_linear_bias(key):
            return value.unsqueeze(0)
        return value

    def _to_single(self, key: str, value: Tensor) -> Tensor:
        if self._is_linear_bias(key):
            return value.squeeze(0).contiguous()
        return value.contiguous()

    def sibling_state(self, index: int) -> dict[str, Tensor]:
        """Sibling ``index``'s weights as the single model's state dict (copies)."""
        state: dict[str, Tensor] = {}
        for key, value in self.net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                state[key] = value.detach().clone()
            else:
                state[key] = self._to_single(key, value.detach()[index]).clone()
        return state

    @torch.no_grad()
    def load_sibling(self, index: int, state: Mapping[str, Tensor]) -> None:
        """Set sibling ``index`` from a single model's state dict."""
        own = self.net.state_dict()
        missing = set(own) - set(state)
        if missing:
            raise KeyError(f"state lacks {sorted(missing)}")
        for key, target in own.items():
            value = state[key].to(target.device, target.dtype)
            if key.endswith("num_batches_tracked"):
                target.copy_(value)
            else:
                target[index].copy_(self._from_single(key, value))

    # ---- the optimizer's view ------------------------------------------------------------------

    def sibling_parameters(self) -> list[Tensor]:
        """Every sibling's slice of every parameter, as separate tensors sharing the stack's
        storage, for the optimizer. Stepping these (after ``share_gradients``) updates the
        stack in place, and an optimizer sees exactly the tensors it would see for each
        network alone: fused and multi-tensor kernels then round each sibling's update the
        same way as for the network alone, and the optimizer state is per sibling."""
        if not self._aliases:
            for param in self.net.parameters():
                self._aliases.append([param.detach()[i] for i in range(self.size)])
        return [alias for aliases in self._aliases for alias in aliases]

    def share_gradients(self) -> None:
        """Hand each sibling slice its part of the stacked gradient (views; no copy)."""
        self.sibling_parameters()
        for param, aliases in zip(self.net.parameters(), self._aliases, strict=True):
            grad = param.grad
            for index, alias in enumerate(aliases):
                alias.grad = None if grad is None else grad[index]

    def stacked_masks(self, masks: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Per-sibling masks (keyed like the single model's weights) as masks of this stack's
        parameters, for ``MaskEnforcer``."""
        keys = list(masks[0])
        if any(list(m) != keys for m in masks):
            raise ValueError("every sibling's mask must cover the same weights")
        return {key: torch.stack([self._from_single(key, m[key]) for m in masks]) for key in keys}
