"""Where a run keeps each file on disk: :mod:`api_schemas.run_layout`'s names under a folder.

The layout module owns every name; this only joins them onto the run's folder (a replicate's
folder for replicate r >= 1), so the engine keeps working with paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from api_schemas.run_layout import TICKET_VARIANT, RunLayout

TICKET = TICKET_VARIANT
_NAMES = RunLayout()


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def replicate(self, r: int) -> RunPaths:
        """Replicate r's files: replicate 0 is the run itself."""
        return self if r == 0 else RunPaths(self.root / _NAMES.replicate(r).prefix)

    def stack_checkpoint(self, k: int, digest: str) -> Path:
        return self.root / _NAMES.stack_checkpoint(k, digest)

    def round_plan(self, k: int) -> Path:
        return self.root / _NAMES.round_plan(k)

    def round_dir(self, k: int) -> Path:
        return self.root / _NAMES.round_dir(k)

    def variant_dir(self, k: int, variant: str) -> Path:
        return self.root / _NAMES.variant_dir(k, variant)

    def mask(self, k: int, variant: str = TICKET) -> Path:
        return self.root / _NAMES.mask(k, variant)

    def trained(self, k: int, variant: str = TICKET) -> Path:
        return self.root / _NAMES.trained(k, variant)

    def metrics(self, k: int, variant: str = TICKET) -> Path:
        return self.root / _NAMES.metrics(k, variant)

    def checkpoint(self, k: int, variant: str = TICKET) -> Path:
        return self.root / _NAMES.checkpoint(k, variant)

    @property
    def init(self) -> Path:
        return self.root / _NAMES.init

    @property
    def rewind(self) -> Path:
        return self.root / _NAMES.rewind

    @property
    def spec(self) -> Path:
        return self.root / _NAMES.spec

    @property
    def rounds(self) -> Path:
        return self.root / _NAMES.rounds

    @property
    def manifest(self) -> Path:
        return self.root / _NAMES.manifest

    @property
    def ticket(self) -> Path:
        return self.root / _NAMES.ticket

    @property
    def ticket_sparse(self) -> Path:
        return self.root / _NAMES.ticket_sparse

    @property
    def trained_sparse(self) -> Path:
        return self.root / _NAMES.trained_sparse

    @property
    def final_mask(self) -> Path:
        return self.root / _NAMES.final_mask

    @property
    def final_trained(self) -> Path:
        return self.root / _NAMES.final_trained

    @property
    def dense(self) -> Path:
        return self.root / _NAMES.dense

    @property
    def onnx(self) -> Path:
        return self.root / _NAMES.onnx
