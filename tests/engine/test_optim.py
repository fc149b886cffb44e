"""The engine's Adam: torch's fused kernel without its per-step bookkeeping, same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from api_schemas.spec import TrainingSpec
from worker.engine.optim import LeanAdam, build_optimizer


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 12, generator=generator)
        y = torch.randint(0, 3, (5,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_lean_adam_matches_torch_fused_adam(optimizer: str) -> None:
    training = TrainingSpec(optimizer=optimizer, lr=0.01, weight_decay=1e-3)  # type: ignore[arg-type]
    lean_net, torch_net = _net(0), _net(0)
    lean = build_optimizer(lean_net.parameters(), training)
    assert isinstance(lean, LeanAdam)
    reference = torch.optim.Adam(
        torch_net.parameters(),
        lr=0.01,
        weight_decay=1e-3,
        fused=True,
        decoupled_weight_decay=optimizer == "adamw",
    )
    _train(lean_net, lean, 20)
    _train(torch_net, reference, 20)
    for ours, theirs in zip(lean_net.parameters(), torch_net.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_step_hooks_still_run_though_the_profiler_wrapper_is_skipped() -> None:
    net = _net(0)
    optimizer = LeanAdam(net.parameters(), lr=0.01, fused=True)
    assert not hasattr(LeanAdam.step, "__wrapped__")  # torch did not wrap it
    calls: list[str] = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    _train(net, optimizer, 3)
    assert calls == ["pre", "post"] * 3
