"""Where a run keeps each artifact: one-line helpers, so every module agrees on the layout.

manifest.json  rounds.json  spec.json
ticket.safetensors  mask.safetensors  trained.safetensors  dense.safetensors
model.onnx                                   (trained.safetensors as ONNX, replicate 0)
ticket.sparse.safetensors  trained.sparse.safetensors
                                             (the same ticket and trained model, compact: only
                                             the surviving weights, see api_schemas.sparse_tensors)
state/init.safetensors  state/rewind.safetensors
rounds/<k>/mask.safetensors  rounds/<k>/trained.safetensors  rounds/<k>/metrics.json
rounds/<k>/<control>/trained.safetensors  rounds/<k>/<control>/metrics.json
rounds/<k>/random_prune/mask.safetensors
rounds/<k>/stack-<digest>.safetensors      (the checkpoint of networks trained stacked)
rounds/<k>/plan.json                         (which networks train in which stack, on how many
                                             lanes)
replicates/<r>/...                           (replicate r >= 1: the same layout, rounds.json aside)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TICKET = "ticket"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def replicate(self, r: int) -> RunPaths:
        """Replicate r's files: replicate 0 is the run itself."""
        return self if r == 0 else RunPaths(self.root / "replicates" / str(r))

    def stack_checkpoint(self, k: int, digest: str) -> Path:
        return self.round_dir(k) / f"stack-{digest}.safetensors"

    def round_plan(self, k: int) -> Path:
        return self.round_dir(k) / "plan.json"

    def round_dir(self, k: int) -> Path:
        return self.root / "rounds" / str(k)

    def variant_dir(self, k: int, variant: str) -> Path:
        return self.round_dir(k) if variant == TICKET else self.round_dir(k) / variant

    def mask(self, k: int, variant: str = TICKET) -> Path:
        return self.variant_dir(k, variant) / "mask.safetensors"

    def trained(self, k: int, variant: str = TICKET) -> Path:
        return self.variant_dir(k, variant) / "trained.safetensors"

    def metrics(self, k: int, variant: str = TICKET) -> Path:
        return self.variant_dir(k, variant) / "metrics.json"

    def checkpoint(self, k: int, variant: str = TICKET) -> Path:
        return self.variant_dir(k, variant) / "checkpoint.safetensors"

    @property
    def init(self) -> Path:
        return self.root / "state" / "init.safetensors"

    @property
    def rewind(self) -> Path:
        return self.root / "state" / "rewind.safetensors"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def ticket(self) -> Path:
        return self.root / "ticket.safetensors"

    @property
    def ticket_sparse(self) -> Path:
        return self.root / "ticket.sparse.safetensors"

    @property
    def trained_sparse(self) -> Path:
        return self.root / "trained.sparse.safetensors"

    @property
    def final_mask(self) -> Path:
        return self.root / "mask.safetensors"

    @property
    def final_trained(self) -> Path:
        return self.root / "trained.safetensors"

    @property
    def dense(self) -> Path:
        return self.root / "dense.safetensors"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"
