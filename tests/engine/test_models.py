"""The model registry: shapes, open_lth's parameter counts, the output-layer convention, input
checks and safetensors weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from api_schemas.spec import ARCHITECTURES, ModelSpec
from worker.engine.errors import ModelError
from worker.engine.models import (
    LAYER_TYPES,
    REGISTRY,
    build_model,
    count_parameters,
    load_weights,
    output_layer,
)

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)

#: Parameters on CIFAR-10, (3, 32, 32) inputs and 10 classes.
#: lenet/mlp: 3072*300+300 + 300*100+100 + 100*10+10 = 953,010.
#: conv2: convs 3*64*9+64 + 64*64*9+64 = 38,720; fc1 (16*16*64)*256+256 = 4,194,560;
#:   fc2 256*256+256 = 65,792; fc3 2,570; total 4,301,642.
#: conv4: convs 38,720 + 128*64*9+128 + 128*128*9+128 = 260,160; fc1 (8*8*128)*256+256 =
#:   2,097,408; total 2,425,930.
#: conv6: convs 260,160 + 256*128*9+256 + 256*256*9+256 = 1,145,408; fc1 (4*4*256)*256+256 =
#:   1,048,832; total 2,262,602 (the paper's table says 1.7M; its layers give 2.26M).
#: vgg and resnet: open_lth's counts (VGG-16 14,728,266, VGG-19 20,040,522, ResNet-20 272,474,
#:   ResNet-56 855,770); VGG-11/13 follow from the same layers.
CIFAR_PARAMETERS = {
    "lenet_300_100": 953_010,
    "mlp": 953_010,
    "conv2": 4_301_642,
    "conv4": 2_425_930,
    "conv6": 2_262_602,
    "vgg11": 9_231_114,
    "vgg13": 9_416_010,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
    "resnet20": 272_474,
    "resnet56": 855_770,
}
CONV_ARCHS = [arch for arch in ARCHITECTURES if arch not in ("lenet_300_100", "mlp")]


def spec(arch: str, **options: object) -> ModelSpec:
    if arch == "mlp" and "hidden_sizes" not in options:
        options["hidden_sizes"] = [300, 100]
    return ModelSpec.model_validate({"arch": arch, **options})


def forward(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.randn(2, *input_shape))
    return out


def prunable(model: nn.Module) -> int:
    """Weights of Linear and Conv layers: what open_lth prunes."""
    return sum(
        module.weight.numel()
        for _, module in model.named_modules()
        if isinstance(module, LAYER_TYPES) and isinstance(module.weight, torch.Tensor)
    )


def test_registry_holds_exactly_the_spec_architectures() -> None:
    assert set(REGISTRY) == set(ARCHITECTURES)
    assert set(CIFAR_PARAMETERS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cifar_forward_and_parameter_count(arch: str) -> None:
    model = build_model(spec(arch), CIFAR, 10)
    assert model.training  # the dry run leaves the model as built
    assert forward(model, CIFAR).shape == (2, 10)
    assert count_parameters(model) == CIFAR_PARAMETERS[arch]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_mnist_forward(arch: str) -> None:
    assert forward(build_model(spec(arch), MNIST, 10), MNIST).shape == (2, 10)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_classifier_is_the_last_linear_or_conv(arch: str) -> None:
    model = build_model(spec(arch), CIFAR, 7)
    layers = [m for _, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert layers[-1] is linears[-1] is model.get_submodule(output_layer(model))
    assert linears[-1].out_features == 7


def test_lenet_300_100_is_the_papers() -> None:
    model = build_model(spec("lenet_300_100"), MNIST, 10)
    # 784*300+300 + 300*100+100 + 100*10+10
    assert count_parameters(model) == 266_610
    assert prunable(model) == 266_200
    assert list(model.state_dict()) == [f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]


@pytest.mark.parametrize(
    ("arch", "hidden", "expected"),
    [
        ("lenet_300_100", None, 40 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("mlp", [500, 500], 40 * 500 + 500 + 500 * 500 + 500 + 500 * 10 + 10),
        ("mlp", [8], 40 * 8 + 8 + 8 * 10 + 10),
    ],
)
def test_fully_connected_on_flat_inputs(arch: str, hidden: list[int] | None, expected: int) -> None:
    model = build_model(spec(arch, hidden_sizes=hidden), (40,), 10)
    assert forward(model, (40,)).shape == (2, 10)
    assert count_parameters(model) == expected
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert layers == [f"fc{i}" for i in range(1, len(hidden or [300, 100]) + 2)]


def test_resnet20_prunable_weights_match_open_lth() -> None:
    assert prunable(build_model(spec("resnet20"), CIFAR, 10)) == 270_896


def test_resnet_width_sets_the_first_stage() -> None:
    model = build_model(spec("resnet20", width=8), CIFAR, 10)
    assert model.get_submodule("conv").out_channels == 8
    assert model.get_submodule("fc").in_features == 32
    assert forward(model, CIFAR).shape == (2, 10)


def test_state_dict_keys_follow_open_lth() -> None:
    assert {"conv.weight", "blocks.3.shortcut.0.weight", "fc.weight"} <= set(
        build_model(spec("resnet20"), CIFAR, 10).state_dict()
    )
    assert {"layers.0.conv.weight", "layers.0.bn.running_mean", "fc.bias"} <= set(
        build_model(spec("vgg11"), CIFAR, 10).state_dict()
    )


def test_torchvision_resnet18_on_one_channel_images() -> None:
    model = build_model(spec("torchvision:resnet18"), MNIST, 10)
    assert model.get_submodule("conv1").in_channels == 1
    assert output_layer(model) == "fc"
    assert forward(model, MNIST).shape == (2, 10)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("torchvision:no_such_net", "not a torchvision model"),
        ("torchvision:fcn_resnet50", "not a classification model"),
    ],
)
def test_torchvision_names_must_be_classifiers(arch: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as error:
        build_model(spec(arch), CIFAR, 10)
    assert "list_models" in str(error.value)


@pytest.mark.parametrize(
    ("arch", "input_shape", "message"),
    [
        ("conv2", (40,), "channels, height, width"),
        ("vgg11", (40,), "channels, height, width"),
        ("resnet20", (40,), "channels, height, width"),
        ("torchvision:resnet18", (40,), "channels, height, width"),
        ("conv6", (3, 4, 4), "at least 8x8"),
        ("vgg16", (3, 8, 8), "at least 16x16"),
        ("torchvision:squeezenet1_1", (3, 8, 8), r"cannot run on inputs of shape \(3, 8, 8\)"),
    ],
)
def test_inputs_a_model_cannot_take_are_model_errors(
    arch: str, input_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        build_model(spec(arch), input_shape, 10)


def test_dry_run_turns_runtime_errors_into_model_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "lenet_300_100", lambda s, shape, n: nn.Linear(3, n))
    with pytest.raises(ModelError, match=r"cannot run on inputs of shape \(40,\)"):
        build_model(spec("lenet_300_100"), (40,), 10)


def test_outputs_must_be_logits_for_every_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "lenet_300_100", lambda s, shape, n: nn.Linear(40, n + 1))
    with pytest.raises(ModelError, match=r"not logits of shape \(2, 10\)"):
        build_model(spec("lenet_300_100"), (40,), 10)


def test_load_weights_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.safetensors"
    source = build_model(spec("resnet20", width=4), CIFAR, 10)
    source.state_dict()["bn.running_mean"].fill_(0.5)  # buffers travel too
    save_file(source.state_dict(), str(path))
    target = build_model(spec("resnet20", width=4), CIFAR, 10)
    load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"missing keys fc1\.bias"),
        ("add", r"unexpected keys extra\.weight"),
        ("reshape", r"shape mismatches fc1\.weight \(file \[300, 39\], model \[300, 40\]\)"),
    ],
)
def test_load_weights_rejects_a_mismatch(tmp_path: Path, change: str, message: str) -> None:
    path = tmp_path / "weights.safetensors"
    model = build_model(spec("lenet_300_100"), (40,), 10)
    tensors = dict(model.state_dict())
    if change == "drop":
        del tensors["fc1.bias"]
    elif change == "add":
        tensors["extra.weight"] = torch.zeros(2)
    else:
        tensors["fc1.weight"] = torch.zeros(300, 39)
    save_file(tensors, str(path))
    before = model.state_dict()["fc1.weight"].clone()
    with pytest.raises(ModelError, match=message) as error:
        load_weights(model, path)
    assert str(path) in str(error.value)
    assert torch.equal(model.state_dict()["fc1.weight"], before)  # nothing half-loaded


def test_load_weights_lists_at_most_five_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty_ish.safetensors"
    save_file({"other": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match="and 1 more") as error:
        load_weights(build_model(spec("mlp", hidden_sizes=[4, 4]), (40,), 10), path)
    assert "fc1.weight" in str(error.value)


@pytest.mark.parametrize("content", [b"not a safetensors file", None])
def test_load_weights_rejects_unreadable_files(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match="cannot read weights file") as error:
        load_weights(build_model(spec("lenet_300_100"), MNIST, 10), path)
    assert str(path) in str(error.value)
