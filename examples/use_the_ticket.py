"""Use a finished job's winning ticket: compact files, the PyTorch module, ONNX, your own module.

    export LTH_URL=http://lth.internal:8000 LTH_API_KEY=lth_...
    python examples/use_the_ticket.py job_01... --dest ticket

Downloads the trained sparse model as a PyTorch module (from the compact file), checks that
``model.onnx`` gives the same logits in onnxruntime (when it is installed), then puts the mask
on a fresh module of the same architecture and fine-tunes it a few steps with the pruned weights
held at zero, as you would continue training a ticket in your own code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from client.sdk import Client, apply_mask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--dest", type=Path, default=Path("ticket"))
    args = parser.parse_args()

    with Client() as lth:  # LTH_URL and LTH_API_KEY from the environment
        sizes = {a.name: a.size for a in lth.list_artifacts(args.job_id)}
        for dense, compact in (("ticket", "ticket.sparse"), ("trained", "trained.sparse")):
            ratio = sizes[f"{compact}.safetensors"] / sizes[f"{dense}.safetensors"]
            print(f"{compact}.safetensors: {100 * ratio:.1f}% of {dense}.safetensors")
        trained = lth.load_trained(args.job_id, args.dest).eval()
        masks = lth.masks(args.job_id, args.dest)
        fresh = lth.load_ticket(args.job_id, args.dest)  # the ticket: rewind-point weights
        job = lth.get_job(args.job_id)
        if "model.onnx" in sizes:
            lth.download_all(args.job_id, args.dest, names=["model.onnx"])

    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
    print(f"{job.id}: {100 * kept:.2f}% of the prunable weights kept")
    # The compact files came with the job's manifest, which records what the model takes.
    manifest = json.loads((args.dest / "manifest.json").read_text())
    inputs = torch.randn(4, *manifest["model"]["input_shape"])
    with torch.no_grad():
        logits = trained(inputs)
    onnx_file = args.dest / "model.onnx"
    if onnx_file.exists():
        try:
            import onnxruntime
        except ImportError:
            print("onnxruntime is not installed: model.onnx not checked")
        else:
            session = onnxruntime.InferenceSession(str(onnx_file))
            (served,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
            difference = float((torch.from_numpy(served) - logits).abs().max())
            print(f"ONNX max abs difference from PyTorch: {difference:.2e}")

    # Your own training loop on the ticket, the pruned weights held at zero by torch's pruning
    # API (custom_from_mask); call torch.nn.utils.prune.remove(module, "weight") when done.
    apply_mask(fresh, masks, keep_pruned=True)
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(fresh(inputs), torch.zeros(4, dtype=torch.long))
        loss.backward()
        optimizer.step()
    state = fresh.state_dict()
    still_zero = all(
        bool((state[f"{key}_orig"] * state[f"{key}_mask"])[~torch.from_numpy(mask)].eq(0).all())
        for key, mask in masks.items()
    )
    print(f"pruned weights still zero after fine-tuning: {still_zero}")
    return 0 if still_zero else 1


if __name__ == "__main__":
    sys.exit(main())
