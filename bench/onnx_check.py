"""How faithful and how cheap ``model.onnx`` is, for every built-in architecture.

Each architecture is built as a job builds it, given real batch-norm statistics (a few training-
mode passes), pruned to 20% density by one global magnitude threshold, exported as the engine
exports a run's trained model, and run by onnxruntime against PyTorch on the same inputs: real
Fashion-MNIST test images for the 1x28x28 models (synthetic ones when the dataset is missing),
seeded random CIFAR-shaped batches for the conv nets. Reported: the largest absolute difference of
the logits, whether every argmax agrees, the export's wall time (after one warm-up export that
pays the exporter's imports, reported apart) and the file's size.

Run: ``python -m bench.onnx_check``; writes ``bench/results/onnx_check.json``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from api_schemas.spec import ModelSpec
from bench.common import FASHION_MNIST, write_result
from worker.engine.data.idx import read_idx
from worker.engine.masks import apply_mask, dense_mask, density
from worker.engine.models import build_model
from worker.engine.onnx_export import INPUT, OPSET, OUTPUT, export_model
from worker.engine.pruning import prune_global

DENSITY = 0.2
EXAMPLES = 256
ARCHITECTURES: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
    ("lenet_300_100", (1, 28, 28), {}),
    ("mlp", (1, 28, 28), {"hidden_sizes": [128, 64]}),
    ("conv2", (3, 32, 32), {}),
    ("conv4", (3, 32, 32), {}),
    ("conv6", (3, 32, 32), {}),
    ("vgg11", (3, 32, 32), {}),
    ("resnet20", (3, 32, 32), {}),
]


def sparse_model(arch: str, shape: tuple[int, ...], extra: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, **extra), shape, 10)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 1.5 + 0.3)
    mask = prune_global(model.state_dict(), dense_mask(model), 1 - DENSITY)
    model.load_state_dict(apply_mask(model.state_dict(), mask))
    return model.eval()


def inputs(shape: tuple[int, ...]) -> tuple[Tensor, str]:
    images = FASHION_MNIST / "t10k-images-idx3-ubyte.gz"
    if shape == (1, 28, 28) and images.exists():
        pixels = np.ascontiguousarray(read_idx(images)[:EXAMPLES])
        x = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
        return (x - 0.2860) / 0.3530, "fashion-mnist test images"
    generator = torch.Generator().manual_seed(1)
    return torch.randn(EXAMPLES, *shape, generator=generator), "synthetic (seeded normal)"


def check(arch: str, shape: tuple[int, ...], extra: dict[str, Any], folder: Path) -> dict[str, Any]:
    import onnxruntime as ort

    model = sparse_model(arch, shape, extra)
    path = folder / f"{arch}.onnx"
    result = export_model(model, None, shape, path)
    row: dict[str, Any] = {
        "architecture": arch,
        "input_shape": list(shape),
        "density": round(density(_mask_of(model)), 4),
        "export_seconds": round(result.seconds, 2),
        "status": result.status,
    }
    if result.status != "exported":
        return {**row, "reason": result.reason}
    x, source = inputs(shape)
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(np.asarray(session.run([OUTPUT], {INPUT: x.numpy()})[0]))
    return {
        **row,
        "inputs": source,
        "examples": len(x),
        "max_abs_difference": float((got - expected).abs().max()),
        "max_abs_logit": float(expected.abs().max()),
        "same_argmax": bool(torch.equal(got.argmax(1), expected.argmax(1))),
        "onnx_bytes": path.stat().st_size,
    }


def _mask_of(model: nn.Module) -> dict[str, Tensor]:
    """The mask the weights carry: a pruned entry is an exact zero."""
    state = model.state_dict()
    return {key: state[key] != 0 for key in dense_mask(model)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | density | ONNX max abs difference | same argmax | export seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "exported":
            lines.append(
                f"| {r['architecture']} | {r['density']:.2%} | skipped: {r['reason']} | - "
                f"| {r['export_seconds']:.2f} |"
            )
            continue
        lines.append(
            f"| {r['architecture']} | {r['density']:.2%} | {r['max_abs_difference']:.2e} "
            f"| {'yes' if r['same_argmax'] else 'no'} | {r['export_seconds']:.2f} |"
        )
    return "\n".join(lines)


#: The tests' bound on |onnxruntime - PyTorch| over the logits.
MAX_DIFFERENCE = 1e-4


def figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One figure per architecture in the form ``bench.summary`` reads: exported, within the
    bound, with the same argmax."""
    return [
        {
            "figure": f"{row['architecture']}: ONNX max abs difference from PyTorch",
            "value": row.get("max_abs_difference"),
            "target": MAX_DIFFERENCE,
            "comparison": "<=",
            "passed": row.get("max_abs_difference") is not None
            and row["max_abs_difference"] <= MAX_DIFFERENCE
            and bool(row.get("same_argmax")),
        }
        for row in rows
    ]


def main() -> None:
    import onnx
    import onnxruntime
    import onnxscript

    with tempfile.TemporaryDirectory() as tmp:
        warm_up = export_model(nn.Linear(4, 2), None, (4,), Path(tmp) / "warm-up.onnx")
        rows = [check(arch, shape, extra, Path(tmp)) for arch, shape, extra in ARCHITECTURES]
    path = write_result(
        "onnx_check",
        {
            "opset": OPSET,
            "density": DENSITY,
            "first_export_seconds": round(warm_up.seconds, 2),
            "versions": {
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "onnxscript": onnxscript.__version__,
            },
            "command": "python -m bench.onnx_check",
            "figures": figures(rows),
            "rows": rows,
        },
    )
    print(table(rows))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
