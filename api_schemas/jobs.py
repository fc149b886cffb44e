"""What the job service answers: jobs, their progress, events, artifacts, datasets and models.

These are response contracts shared by the HTTP edge, the store and the client; the request
contract is :class:`api_schemas.spec.JobSpec`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api_schemas.results import RunSummary, Variant
from api_schemas.spec import JobSpec

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
#: States a job never leaves.
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
#: States that count against a tenant's concurrency cap.
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})

EventType = Literal["state", "progress", "round", "warning", "message", "reuse", "execution"]
DatasetFormat = Literal["npz", "safetensors"]
#: onnx: an architecture with its weights (``model.uri``); safetensors: starting weights for a
#: built-in architecture (``model.weights``).
ModelFormat = Literal["onnx", "safetensors"]


class _Response(BaseModel):
    """Closed shapes: a field the server did not document is a bug, not an extension. Numbers
    are finite, as JSON's are: a non-finite one would reach clients as ``null``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Progress(_Response):
    """Where a running job is; written by the worker with every heartbeat."""

    round: int = Field(ge=0, description="Current pruning round; 0 is the dense network.")
    rounds_total: int = Field(ge=0, description="Rounds the job runs at most, round 0 included.")
    step: int = Field(ge=0, description="Training iteration reached within the current round.")
    steps_total: int = Field(ge=0, description="Training iterations of one round.")
    fraction: float = Field(ge=0.0, le=1.0, description="Share of the whole job done, 0..1.")
    eta_seconds: float | None = Field(
        default=None, ge=0, description="Estimated seconds until the job ends; null if unknown."
    )
    variant: Variant = Field(
        default="ticket", description="Which network is training: the ticket or a control."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description='Latest evaluation, e.g. `{"test_accuracy": 0.97, "train_loss": 0.1}`.',
    )

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_metrics(cls, metrics: Any) -> Any:
        """Leave out a metric that is no finite number (a loss at the step training diverged,
        or the ``null`` such a value was stored as): progress is for display, and one odd
        reading must neither fail the heartbeat that writes it nor the reads that follow."""
        if not isinstance(metrics, dict):
            return metrics
        return {
            name: value
            for name, value in metrics.items()
            if not (value is None or (isinstance(value, float) and not math.isfinite(value)))
        }


class JobError(_Response):
    """Why a job failed, safe to show to the caller (no stack traces)."""

    code: str = Field(description="Stable machine-readable reason, e.g. `out_of_memory`.")
    message: str = Field(description="Human-readable explanation.")


class JobResult(_Response):
    """The outcome of a succeeded job (mirrors :class:`api_schemas.results.RunSummary`)."""

    ticket_round: int = Field(description="Round whose subnetwork is the winning ticket.")
    ticket_density: float = Field(description="Fraction of prunable weights the ticket keeps.")
    ticket_accuracy: float = Field(
        description="The ticket's accuracy (see RoundResult); the mean over replicates."
    )
    dense_accuracy: float = Field(
        description="The dense network's accuracy, for comparison; the mean over replicates."
    )
    ticket_accuracy_std: float = Field(
        default=0.0, description="Standard deviation of the ticket's accuracy over replicates."
    )
    dense_accuracy_std: float = Field(
        default=0.0, description="Standard deviation of the dense accuracy over replicates."
    )
    replicates: int = Field(default=1, ge=1, description="Independent IMP chains the job ran.")
    rounds_completed: int = Field(description="Pruning rounds run after the dense round.")
    stop_reason: str = Field(description="Why pruning stopped, e.g. `rounds` or `accuracy_drop`.")

    @classmethod
    def from_summary(cls, summary: RunSummary) -> JobResult:
        """The API view of the engine's summary."""
        return cls.model_validate(summary.model_dump())


class Job(_Response):
    """A pruning job as the API shows it."""

    id: str = Field(
        description="Opaque id, `job_` and 26 characters.", examples=["job_" + "0" * 26]
    )
    status: JobStatus = Field(description="queued → running → succeeded | failed | cancelled.")
    spec: JobSpec = Field(description="The submitted specification, defaults filled in.")
    spec_hash: str = Field(description="sha256 of the canonical spec: equal hashes, equal jobs.")
    name: str | None = Field(default=None, description="The spec's `name`.")
    labels: dict[str, str] = Field(default_factory=dict, description="The spec's `labels`.")
    created_at: datetime = Field(description="When the job was accepted (UTC).")
    started_at: datetime | None = Field(default=None, description="First time a worker ran it.")
    finished_at: datetime | None = Field(default=None, description="When it reached a final state.")
    attempt: int = Field(
        ge=0, description="How many times a worker started it; > 1 after a crash recovery."
    )
    progress: Progress | None = Field(default=None, description="Latest progress; null if none.")
    error: JobError | None = Field(default=None, description="Why it failed; null otherwise.")
    result: JobResult | None = Field(default=None, description="Set once the job succeeded.")
    cancel_requested: bool = Field(
        description="A cancel was asked for while running; the worker stops at the next check."
    )
    urls: dict[str, str] = Field(
        description="Absolute links: `self`, `cancel`, `events`, `artifacts`, `rounds`."
    )


class JobList(_Response):
    """One page of jobs, newest first."""

    data: list[Job] = Field(description="The jobs on this page.")
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page."
    )
    has_more: bool = Field(description="Whether another page follows.")


class Artifact(_Response):
    """A file a job produced, downloadable from `url`."""

    name: str = Field(
        description="Path relative to the job's artifact folder.",
        examples=["ticket.safetensors", "rounds/3/mask.safetensors"],
    )
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(description="Hex sha256 of the content; also the download's ETag.")
    media_type: str = Field(description="Content type the download is served with.")
    url: str = Field(description="Absolute download URL; supports Range and If-None-Match.")


class ArtifactList(_Response):
    """All artifacts of a job, sorted by name."""

    data: list[Artifact] = Field(description="The artifacts.")


class Event(_Response):
    """Something that happened to a job; ids increase in the order events were written."""

    id: int = Field(description="Increasing id; pass as `after` (or SSE `Last-Event-ID`).")
    job_id: str = Field(description="The job this event belongs to.")
    type: EventType = Field(
        description="state: status change; progress: heartbeat; round: a round finished; "
        "reuse: trainings taken from an earlier job of the tenant instead of trained again; "
        "execution: how the trainings run (batched siblings or one by one, threads); "
        "warning / message: free text for humans."
    )
    created_at: datetime = Field(description="When it was written (UTC).")
    data: dict[str, Any] = Field(
        default_factory=dict,
        description='Type-specific payload, e.g. `{"status": "running", "attempt": 1}`.',
    )


class EventList(_Response):
    """One page of a job's events, oldest first."""

    data: list[Event] = Field(description="The events on this page.")
    next_cursor: int | None = Field(
        description="Pass as `after` to continue; the last event's id, null when the page is empty."
    )
    has_more: bool = Field(description="Whether more events were already available.")


class Dataset(_Response):
    """An uploaded dataset, usable in a spec as `dataset.uri = dataset://<id>`."""

    id: str = Field(description="Opaque id, `ds_` and 26 characters.")
    name: str = Field(description="The name given at upload (default: the file name).")
    format: DatasetFormat = Field(description="File format.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(description="Hex sha256 of the file.")
    uri: str = Field(description="What to put in `dataset.uri`: `dataset://<id>`.")
    created_at: datetime = Field(description="Upload time (UTC).")
    train_size: int = Field(ge=0, description="Examples in `x_train`.")
    test_size: int = Field(ge=0, description="Examples in `x_test`.")
    input_shape: list[int] = Field(description="Shape of one example, e.g. [1, 28, 28].")
    num_classes: int | None = Field(
        default=None, description="1 + the largest integer label; null for non-integer labels."
    )


class DatasetList(_Response):
    """A tenant's datasets, newest first."""

    data: list[Dataset] = Field(description="The datasets.")


class ModelInfo(_Response):
    """A built-in architecture that `model.arch` accepts."""

    name: str = Field(description="Value for `model.arch`.", examples=["lenet_300_100"])
    description: str = Field(description="What the architecture is.")
    parameters: int | None = Field(
        description="Trainable parameters for the reference input (`reference_input`, 10 "
        "classes); null when it depends on required options (mlp)."
    )
    reference_input: list[int] = Field(description="Input shape the parameter count is for.")
    options: list[str] = Field(description="ModelSpec fields besides `arch` that apply.")


class ModelList(_Response):
    """Every built-in architecture (any `torchvision:<name>` is accepted too)."""

    data: list[ModelInfo] = Field(description="The architectures.")


class UploadedModel(_Response):
    """An uploaded model: an ONNX graph for `model.uri`, or safetensors weights for
    `model.weights`, named `model://<id>` in a spec."""

    id: str = Field(description="Opaque id, `mdl_` and 26 characters.")
    name: str = Field(description="The name given at upload (default: the file name).")
    format: ModelFormat = Field(description="onnx (architecture and weights) or safetensors.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(description="Hex sha256 of the file.")
    uri: str = Field(description="`model://<id>`: for `model.uri` (onnx) or `model.weights`.")
    use_as: Literal["model.uri", "model.weights"] = Field(description="The spec field it fits.")
    created_at: datetime = Field(description="Upload time (UTC).")
    parameters: int = Field(ge=0, description="Values in its weights (initializers, tensors).")
    input_shape: list[int] | None = Field(
        default=None, description="onnx: one example's shape (batch left out) when fixed."
    )
    operators: list[str] = Field(
        default_factory=list, description="onnx: the operators its graph uses."
    )


class UploadedModelList(_Response):
    """A tenant's uploaded models, newest first."""

    data: list[UploadedModel] = Field(description="The models.")
