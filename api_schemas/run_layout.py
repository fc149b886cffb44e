"""A run's files: every name in a run and the manifest's shape, in one torch-free place.

The engine writes a run with these names, the worker publishes it, the API lists and serves it,
the reports and the SDK read it: none of them spells a file name of its own. Names are relative
POSIX paths (``rounds/3/mask.safetensors``), the same in a local folder, as object keys under a
prefix and in the API's artifact list::

    manifest.json  rounds.json  spec.json
    ticket.safetensors  mask.safetensors  trained.safetensors  dense.safetensors
    ticket.sparse.safetensors  trained.sparse.safetensors     (compact, api_schemas.sparse_tensors)
    model.onnx                                                (trained, as ONNX; replicate 0)
    report.html  report.png                                   (drawn after the run, not its own)
    state/init.safetensors  state/rewind.safetensors
    rounds/<k>/mask.safetensors  rounds/<k>/trained.safetensors  rounds/<k>/metrics.json
    rounds/<k>/checkpoint.safetensors                         (mid-round, for resuming)
    rounds/<k>/<control>/trained.safetensors  rounds/<k>/<control>/metrics.json
    rounds/<k>/random_prune/mask.safetensors
    rounds/<k>/stack-<digest>.safetensors                     (networks trained stacked)
    rounds/<k>/plan.json                                      (which network trains in which
                                                              stack, on how many lanes)
    replicates/<r>/...                                        (replicate r >= 1: the same layout,
                                                              rounds.json aside)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api_schemas.results import RunSummary

MANIFEST = "manifest.json"
ROUNDS = "rounds.json"
SPEC = "spec.json"
TICKET = "ticket.safetensors"
MASK = "mask.safetensors"
TRAINED = "trained.safetensors"
DENSE = "dense.safetensors"
TICKET_SPARSE = "ticket.sparse.safetensors"
TRAINED_SPARSE = "trained.sparse.safetensors"
ONNX = "model.onnx"
REPORT_STEM = "report"
REPORT_HTML = f"{REPORT_STEM}.html"
REPORT_PNG = f"{REPORT_STEM}.png"
#: The variant name of the ticket itself (controls are named by their kind).
TICKET_VARIANT = "ticket"


def is_report(name: str) -> bool:
    """A report is drawn from a finished run by whoever wraps the engine: not one of its files."""
    return name.rsplit("/", 1)[-1].startswith(f"{REPORT_STEM}.")


@dataclass(frozen=True)
class RunLayout:
    """The names of one run's files; ``prefix`` places replicate r >= 1 under
    ``replicates/<r>/``. Each method is the one place its name is spelled."""

    prefix: str = ""

    def replicate(self, r: int) -> RunLayout:
        """Replicate r's names: replicate 0 is the run itself."""
        return self if r == 0 else RunLayout(f"{self.prefix}replicates/{r}/")

    def round_dir(self, k: int) -> str:
        return f"{self.prefix}rounds/{k}"

    def variant_dir(self, k: int, variant: str) -> str:
        base = self.round_dir(k)
        return base if variant == TICKET_VARIANT else f"{base}/{variant}"

    def mask(self, k: int, variant: str = TICKET_VARIANT) -> str:
        return f"{self.variant_dir(k, variant)}/{MASK}"

    def trained(self, k: int, variant: str = TICKET_VARIANT) -> str:
        return f"{self.variant_dir(k, variant)}/{TRAINED}"

    def metrics(self, k: int, variant: str = TICKET_VARIANT) -> str:
        return f"{self.variant_dir(k, variant)}/metrics.json"

    def checkpoint(self, k: int, variant: str = TICKET_VARIANT) -> str:
        return f"{self.variant_dir(k, variant)}/checkpoint.safetensors"

    def stack_checkpoint(self, k: int, digest: str) -> str:
        return f"{self.round_dir(k)}/stack-{digest}.safetensors"

    def round_plan(self, k: int) -> str:
        return f"{self.round_dir(k)}/plan.json"

    @property
    def init(self) -> str:
        return f"{self.prefix}state/init.safetensors"

    @property
    def rewind(self) -> str:
        return f"{self.prefix}state/rewind.safetensors"

    @property
    def spec(self) -> str:
        return self.prefix + SPEC

    @property
    def rounds(self) -> str:
        return self.prefix + ROUNDS

    @property
    def manifest(self) -> str:
        return self.prefix + MANIFEST

    @property
    def ticket(self) -> str:
        return self.prefix + TICKET

    @property
    def final_mask(self) -> str:
        return self.prefix + MASK

    @property
    def final_trained(self) -> str:
        return self.prefix + TRAINED

    @property
    def dense(self) -> str:
        return self.prefix + DENSE

    @property
    def ticket_sparse(self) -> str:
        return self.prefix + TICKET_SPARSE

    @property
    def trained_sparse(self) -> str:
        return self.prefix + TRAINED_SPARSE

    @property
    def onnx(self) -> str:
        return self.prefix + ONNX


# ---- the manifest -----------------------------------------------------------------------------


class _Record(BaseModel):
    """Read leniently (a newer engine may add fields), written exactly."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ArtifactEntry(_Record):
    name: str = Field(description="Relative POSIX name inside the run.")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ManifestModel(_Record):
    input_shape: list[int]
    num_classes: int
    prunable: list[str] = Field(default_factory=list)


class Manifest(_Record):
    """``manifest.json``: what ran (spec, versions, device, data) and every file it left, with
    size and sha256. Written last: a run with a manifest has finished."""

    spec: dict[str, Any]
    spec_hash: str
    engine_version: str
    created_at: str
    versions: dict[str, str] = Field(default_factory=dict)
    device: str = "cpu"
    model: ManifestModel
    dataset_fingerprint: str | None = None
    summary: RunSummary
    artifacts: list[ArtifactEntry] = Field(default_factory=list)

    def entries(self) -> dict[str, ArtifactEntry]:
        """The artifacts by name."""
        return {entry.name: entry for entry in self.artifacts}

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Parse a manifest file (``OSError`` or pydantic's ``ValidationError`` if it is not
        one)."""
        return cls.model_validate_json(path.read_bytes())
