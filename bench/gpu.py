"""GPU figures of the engine's training step, time-boxed to finish within a few minutes.

- LeNet-300-100 (batch 60, fused Adam, masks kept applied) stacked 1, 3, 10 and 30 siblings
  (``worker.engine.stack.StackedModel``), on one batch shared by the siblings and on one batch
  each: steps/s, sibling-steps/s and what stacking gains over one sibling;
- ResNet-20 on CIFAR-shaped random data (batch 128, the engine's fused SGD): fp32 and bf16
  autocast, NCHW and channels_last, eager and ``torch.compile``, and 3 stacked siblings (bf16,
  NCHW: a stacked kernel has a sibling dimension, which channels_last cannot lay out);
- the peak GPU memory (``torch.cuda.max_memory_allocated``) of each.

Random data on the device: a step's cost does not depend on the values. Each configuration runs
``--seconds`` after its warm-up; configurations that no longer fit in ``--budget`` are skipped
(``torch.compile`` ones last, since compiling cannot be interrupted), and the JSON is rewritten
after each, so a run killed from outside still leaves what it measured.

Run: ``bash bench/gpu.sh`` (or ``python -m bench.gpu [--budget 240] [--seconds 4]``).
Results: ``$OUT/gpu.json`` when OUT is set, else ``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import RESULTS, machine

SIBLINGS = (1, 3, 10, 30)
COMMAND = "bash bench/gpu.sh"
NO_CUDA = (
    "bench/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
    "(torch {torch}, built for CUDA {cuda}); run it on a machine with an NVIDIA GPU."
)


@dataclass(frozen=True)
class Config:
    name: str
    arch: str
    siblings: int = 1
    per_sibling: bool = False
    bf16: bool = False
    channels_last: bool = False
    compiled: bool = False
    #: Seconds to set aside for building and warming it up (compiling, for torch.compile).
    setup_s: float = 5.0


def configs() -> list[Config]:
    lenet = [
        Config(f"lenet_300_100 x{s} {kind}", "lenet_300_100", s, per_sibling=kind == "own batches")
        for kind in ("shared batch", "own batches")
        for s in SIBLINGS
    ]
    resnet = [
        Config(
            f"resnet20 {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW'} eager",
            "resnet20",
            bf16=bf16,
            channels_last=cl,
        )
        for bf16 in (False, True)
        for cl in (False, True)
    ]
    resnet.append(Config("resnet20 x3 stacked bf16 eager", "resnet20", 3, True, bf16=True))
    compiled = [
        Config(
            f"resnet20 {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW'} compiled",
            "resnet20",
            bf16=bf16,
            channels_last=cl,
            compiled=True,
            setup_s=90.0,
        )
        for bf16, cl in ((False, True), (True, True), (True, False))
    ]
    return lenet + resnet + compiled


def build_step(config: Config, device: torch.device) -> Callable[[], None]:
    """One training step of ``config``: forward, the siblings' summed mean losses, backward,
    optimizer step, masks re-applied (80% of every weight matrix/kernel kept)."""
    from api_schemas.spec import ModelSpec, TrainingSpec
    from worker.engine.masks import MaskEnforcer
    from worker.engine.models import build_model
    from worker.engine.optim import build_optimizer
    from worker.engine.stack import StackedModel

    lenet = config.arch == "lenet_300_100"
    shape, batch = ((1, 28, 28), 60) if lenet else ((3, 32, 32), 128)
    training = (
        TrainingSpec(optimizer="adam", lr=1.2e-3)
        if lenet
        else TrainingSpec(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    )
    spec = ModelSpec(arch=config.arch)
    siblings = [build_model(spec, shape, 10) for _ in range(config.siblings)]
    stacked = config.siblings > 1 or lenet
    model: nn.Module = StackedModel.from_models(siblings) if stacked else siblings[0]
    model = model.to(device).train()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if config.channels_last:
        model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model.parameters(), training)
    enforce = MaskEnforcer(
        model,
        {
            name: torch.rand(p.shape, device=device) < 0.8
            for name, p in model.named_parameters()
            if p.dim() >= 2
        },
    )
    enforce()
    s = config.siblings
    x_shape = (s, batch, *shape) if config.per_sibling else (batch, *shape)
    x = torch.randn(x_shape, device=device)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (s, batch) if config.per_sibling else (batch,), device=device)
    targets = y.flatten() if config.per_sibling else y.repeat(s)
    forward: Callable[..., Tensor] = torch.compile(model) if config.compiled else model

    def loss_of(logits: Tensor) -> Tensor:
        if logits.dim() == 3:  # (S, B, classes): the sum of the siblings' mean losses
            return F.cross_entropy(logits.flatten(0, 1).float(), targets) * s
        return F.cross_entropy(logits.float(), y)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16):
            logits = forward(x, per_sibling=True) if config.per_sibling else forward(x)
        loss_of(logits).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        enforce()

    return step


def measure(config: Config, device: torch.device, seconds: float) -> dict[str, Any]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    step = build_step(config, device)
    for _ in range(3):  # warm-up (and, for torch.compile, compiling)
        step()
    torch.cuda.synchronize(device)
    setup = time.perf_counter() - started
    steps, chunk = 0, 10
    started = time.perf_counter()
    while True:
        for _ in range(chunk):
            step()
        steps += chunk
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
        chunk = min(chunk * 2, 500)
    rate = steps / elapsed
    return {
        "steps_per_s": rate,
        "sibling_steps_per_s": rate * config.siblings,
        "steps": steps,
        "seconds": elapsed,
        "setup_s": setup,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
    }


def figures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``bench.summary``: each configuration, and what stacking gains."""
    rows = []
    done = {r["name"]: r for r in results if "steps_per_s" in r}
    for r in results:
        if "steps_per_s" in r:
            value = f"{r['steps_per_s']:,.0f} steps/s, {r['peak_memory_mib']:,.0f} MiB peak"
        else:
            value = r.get("error") or r.get("skipped") or "?"
        rows.append({"figure": r["name"], "value": value, "target": None, "command": COMMAND})
    for kind in ("shared batch", "own batches"):
        one = done.get(f"lenet_300_100 x1 {kind}")
        for s in SIBLINGS[1:]:
            many = done.get(f"lenet_300_100 x{s} {kind}")
            if one and many:
                rows.append(
                    {
                        "figure": f"lenet_300_100 x{s} {kind}: sibling-steps/s over x1's",
                        "value": many["sibling_steps_per_s"] / one["sibling_steps_per_s"],
                        "target": None,
                        "command": COMMAND,
                    }
                )
    return rows


def output_path() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu.json" if out else RESULTS / "gpu.json"


def write(path: Path, header: dict[str, Any], results: list[dict[str, Any]], done: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), **header, "complete": done, "results": results}
    data["figures"] = figures(results)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for everything")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per config")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    header = {"device": torch.cuda.get_device_name(device), "config": vars(args)}
    path = output_path()
    results: list[dict[str, Any]] = []
    print(f"{header['device']}; results: {path}", flush=True)
    for config in configs():
        entry: dict[str, Any] = {"name": config.name, **config.__dict__}
        if time.monotonic() + config.setup_s + args.seconds > deadline:
            entry["skipped"] = "skipped: not enough of the time budget left"
        else:
            try:
                entry |= measure(config, device, args.seconds)
            except Exception as exc:  # one configuration failing must not lose the others
                entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        results.append(entry)
        write(path, header, results, done=False)
        shown = (
            f"{entry['steps_per_s']:9,.0f} steps/s {entry['peak_memory_mib']:8,.0f} MiB"
            if "steps_per_s" in entry
            else entry.get("error") or entry.get("skipped")
        )
        print(f"{config.name:>48}: {shown}", flush=True)
    write(path, header, results, done=True)


if __name__ == "__main__":
    main()
