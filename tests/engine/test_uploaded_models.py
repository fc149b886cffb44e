"""A user's own model as ONNX: converted to a trainable module named like the user's layers,
training exactly like the original, with batch norm and dropout following train/eval, and
pruned by the engine like any built-in architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from api_schemas.spec import JobSpec, ModelSpec
from service.model_files import SUPPORTED_OPS as SERVICE_OPS
from worker.engine.artifacts import load_rounds
from worker.engine.data import DataConfig
from worker.engine.errors import ModelError
from worker.engine.imp import IMPRun
from worker.engine.masks import MaskEnforcer, dense_mask, prunable_layers
from worker.engine.models import build_model
from worker.engine.models.onnx_model import SUPPORTED_OPS, load_onnx_model
from worker.engine.train import Trainee, train_step


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class UserNet(nn.Module):
    """A residual CNN with batch norm and dropout that is in no registry."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(self.drop(x))


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, ...] = (3, 8, 8)) -> Path:
    """The recommended export: training mode keeps dropout, no folding keeps batch norm."""
    model.train()
    torch.onnx.export(
        model,
        (torch.randn(2, *shape),),
        str(path),
        dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    return path


def test_the_service_checks_the_operators_the_engine_converts() -> None:
    assert SERVICE_OPS == SUPPORTED_OPS


def test_conversion_keeps_names_layers_and_modes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = UserNet()
    converted = load_onnx_model(export_onnx(original, tmp_path / "net.onnx"))
    assert converted.state_dict().keys() == original.state_dict().keys()
    assert [layer.key for layer in prunable_layers(converted)] == [
        layer.key for layer in prunable_layers(original)
    ]
    x = torch.randn(6, 3, 8, 8)
    original.eval(), converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x))
        assert torch.equal(converted(x), converted(x))  # no dropout in eval
    original.train(), converted.train()
    torch.manual_seed(5)
    want = original(x)
    torch.manual_seed(5)
    got = converted(x)
    torch.testing.assert_close(got, want)  # same dropout draws, batch statistics
    for key in ("bn.running_mean", "blocks.0.bn1.running_var"):
        torch.testing.assert_close(converted.state_dict()[key], original.state_dict()[key])


def test_training_the_upload_matches_training_the_original(tmp_path: Path) -> None:
    """100 steps of SGD with momentum from the same weights on the same batches: the same
    per-step losses."""
    torch.manual_seed(1)
    original = UserNet()
    converted = load_onnx_model(export_onnx(original, tmp_path / "net.onnx"))
    converted.load_state_dict(original.state_dict())
    generator = torch.Generator().manual_seed(2)
    batches = [
        (
            torch.randn(16, 3, 8, 8, generator=generator),
            torch.randint(0, 4, (16,), generator=generator),
        )
        for _ in range(100)
    ]
    curves = []
    for net in (original, converted):
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        enforce = MaskEnforcer(net, dense_mask(net))
        trainee = Trainee(net)
        torch.manual_seed(3)  # the dropout draws
        curves.append([float(train_step(trainee, optimizer, enforce, x, y)[0]) for x, y in batches])
    assert curves[0][0] != curves[0][-1]
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-4, atol=1e-5)


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.erf(x))

    path = tmp_path / "odd.onnx"
    torch.onnx.export(Odd(), (torch.randn(2, 4),), str(path), dynamo=False)
    with pytest.raises(ModelError, match="unsupported operator 'Erf'"):
        load_onnx_model(path)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_are_pruned_for_two_rounds(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    original = getattr(torchvision.models, name)(num_classes=4)
    path = export_onnx(original, tmp_path / f"{name}.onnx", (3, 32, 32))
    converted = build_model(ModelSpec(uri=str(path)), (3, 32, 32), 4)
    assert converted.state_dict().keys() == original.state_dict().keys()
    spec = JobSpec.model_validate(
        {
            "model": {"uri": str(path)},
            "dataset": {
                "uri": "synthetic://?classes=4&shape=3,32,32&train=64&test=16",
                "validation_size": 0,
            },
            "training": {"batch_size": 8, "steps": "3it", "eval_every": "3it", "lr": 0.01},
            "pruning": {"rounds": 2, "rates": {"conv": 0.2, "linear": 0.2}},
        }
    )
    summary = IMPRun(spec, tmp_path / "out", DataConfig(roots=(tmp_path,))).run()
    assert summary.rounds_completed == 2
    densities = [r.density for r in load_rounds(tmp_path / "out")]
    assert len(densities) == 3 and densities[0] == 1.0
    assert densities[0] > densities[1] > densities[2]
