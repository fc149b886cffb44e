"""Bytes to ship a ticket: the dense safetensors file against the compact one.

Builds each architecture and magnitude-prunes its initial weights to each density in one shot,
as the paper's setups prune: layer-wise for LeNet and the Conv nets, with every layer at the
density its rate compounds to over the IMP rounds that reach the target (fc 20%, conv 10%, output
half of its type's rate per round), and global for ResNet-20. Writes the state dict both ways and
checks that the compact file loads back equal; exports the pruned model to ONNX as a run does
and runs it in onnxruntime against PyTorch on the same inputs. No training, so it takes a minute
or two on two cores. Writes ``bench/results/deploy_sizes.json`` and prints a markdown table.

Run: ``python -m bench.deploy_sizes``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from api_schemas.sparse_tensors import DENSE, layout
from api_schemas.spec import LayerRates, ModelSpec
from bench.common import write_result
from worker.engine.artifacts import load_sparse_state, save_sparse_state
from worker.engine.masks import Mask, apply_mask, dense_mask, density, prunable_layers
from worker.engine.models import build_model, count_parameters
from worker.engine.onnx_export import INPUT, export_model
from worker.engine.pruning import layer_rate, prune_global, prune_layerwise
from worker.engine.tensorio import save_tensors

#: architecture -> (input shape, classes, pruning strategy)
ARCHITECTURES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "lenet_300_100": ((1, 28, 28), 10, "layerwise"),
    "conv2": ((3, 32, 32), 10, "layerwise"),
    "conv4": ((3, 32, 32), 10, "layerwise"),
    "resnet20": ((3, 32, 32), 10, "global"),
}
DENSITIES = (1.0, 0.51, 0.168, 0.107, 0.036)
#: The targets: LeNet-300-100's compact file at most this fraction of the dense one.
TARGETS = {0.107: 0.15, 0.036: 0.06}


def encodings(path: Path) -> dict[str, int]:
    """How many pruned tensors of a (version 2) compact file use each encoding."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    kinds = Counter(entry.encoding for entry in layout(metadata) if entry.encoding != DENSE)
    return dict(sorted(kinds.items()))


def compounded(rounds: float, output: float) -> LayerRates:
    """The rates that leave each layer as dense as ``rounds`` IMP rounds at the paper's rates."""
    base = LayerRates()
    return LayerRates(
        linear=1 - (1 - base.linear) ** rounds,
        conv=1 - (1 - base.conv) ** rounds,
        output=1 - (1 - output) ** rounds,
    )


def prune(model: torch.nn.Module, target: float, strategy: str) -> Mask:
    """A magnitude mask of ``model``'s weights keeping ``target`` of them."""
    state, mask, layers = model.state_dict(), dense_mask(model), prunable_layers(model)
    if strategy == "global":
        return prune_global(state, mask, 1 - target)
    output = next(layer_rate(layer, LayerRates()) for layer in layers if layer.is_output)

    def kept(rounds: float) -> float:  # what prune_layerwise keeps of a dense mask
        rates = compounded(rounds, output)
        survivors = sum(round((1 - layer_rate(layer, rates)) * layer.numel) for layer in layers)
        return survivors / sum(layer.numel for layer in layers)

    low, high = 0.0, 60.0  # IMP rounds, fractional: bisect to the count that keeps the target
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) > target else (low, middle)
    return prune_layerwise(state, mask, layers, compounded(high, output))


def onnx_difference(
    model: torch.nn.Module, state: dict[str, torch.Tensor], shape: tuple[int, ...], folder: Path
) -> float | None:
    """Largest |onnxruntime - PyTorch| over the logits of 16 seeded inputs (None: not
    exported)."""
    import onnxruntime

    path = folder / "model.onnx"
    if export_model(model, state, shape, path).status != "exported":
        return None
    model.load_state_dict(state)
    model.eval()
    inputs = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path))
    (served,) = session.run(None, {INPUT: inputs.numpy()})
    with torch.no_grad():
        expected = model(inputs)
    return float((torch.from_numpy(served) - expected).abs().max())


def measure(arch: str, target: float, folder: Path) -> dict[str, Any]:
    shape, classes, strategy = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch), shape, classes)
    mask = prune(model, target, strategy)
    state = model.state_dict()
    state = apply_mask(state, mask)
    dense, compact = folder / f"{arch}.safetensors", folder / f"{arch}.sparse.safetensors"
    save_tensors(dense, state)
    save_sparse_state(compact, state, mask)
    loaded, _ = load_sparse_state(compact)
    if loaded.keys() != state.keys() or not all(torch.equal(loaded[k], state[k]) for k in state):
        raise AssertionError(f"{arch} at {target:.1%}: the compact file does not load back equal")
    dense_bytes, compact_bytes = dense.stat().st_size, compact.stat().st_size
    return {
        "architecture": arch,
        "parameters": count_parameters(model),
        "strategy": strategy,
        "target_density": target,
        "density": density(mask),
        "dense_bytes": dense_bytes,
        "compact_bytes": compact_bytes,
        "ratio": compact_bytes / dense_bytes,
        "encodings": encodings(compact),
        "onnx_max_abs_difference": onnx_difference(model, state, shape, folder),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | density | dense bytes | compact bytes | ratio | ONNX max difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        difference = r["onnx_max_abs_difference"]
        shown = "not exported" if difference is None else f"{difference:.1e}"
        lines.append(
            f"| {r['architecture']} | {r['density']:.1%} | {r['dense_bytes']:,} "
            f"| {r['compact_bytes']:,} | {r['ratio']:.1%} | {shown} |"
        )
    return "\n".join(lines)


def figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targeted rows of every architecture, in the form ``bench.summary`` reads."""
    return [
        {
            "figure": f"{r['architecture']} compact / dense file at {r['density']:.1%} of weights",
            "ratio": r["ratio"],
            "target": TARGETS[r["target_density"]],
            "comparison": "<=",
            "passed": r["ratio"] <= TARGETS[r["target_density"]],
        }
        for r in rows
        if r["target_density"] in TARGETS
    ]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="deploy-sizes-") as tmp:
        rows = [measure(arch, d, Path(tmp)) for arch in ARCHITECTURES for d in DENSITIES]
    path = write_result(
        "deploy_sizes",
        {"command": "python -m bench.deploy_sizes", "figures": figures(rows), "rows": rows},
    )
    print(table(rows))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
