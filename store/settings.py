"""Configuration of the service and its workers from ``LTH_*`` environment variables.

One ``Settings`` for both sides (pydantic-settings), so the API and the workers can never read
the same variable differently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def _split(value: Any, separator: str) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(separator) if part.strip()]
    return value


class Settings(BaseSettings):
    """Every field is read from ``LTH_<FIELD>`` (e.g. ``LTH_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="LTH_", extra="ignore")

    home: Path = Field(
        default=Path("~/.lth"),
        description="State directory: the default database, broker and artifact store, and a "
        "worker's scratch folders (`scratch/`) and upload cache (`cache/`).",
    )
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{data['home'] / 'lth.db'}",
        description="SQLAlchemy URL of the job store: `sqlite:///<file>` (default "
        "`<home>/lth.db`) or `postgresql+psycopg://user@host/db` for production.",
    )
    database_pool_size: int = Field(
        default=40,
        ge=1,
        le=1000,
        description="Connections the API keeps open to a PostgreSQL job store: as many as "
        "requests it serves at once (its thread pool has 40), so that none waits for a "
        "connection to be opened. Each API process counts against PostgreSQL's "
        "`max_connections` (100 by default).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (`redis://host:6379/0`); unset means the embedded broker "
        "(kombu's filesystem transport under `<home>/broker`), for one machine.",
    )
    artifact_root: Path = Field(
        default_factory=lambda data: data["home"] / "artifacts",
        description="The local artifact store (used while `LTH_ARTIFACT_URL` is unset): "
        "`<job_id>/` run folders and `uploads/`.",
    )
    artifact_url: str | None = Field(
        default=None,
        description="Where runs and uploads are kept: `file:///<dir>` (unset: `file://` + "
        "`LTH_ARTIFACT_ROOT`, for one host or a shared volume) or `s3://<bucket>/<prefix>` "
        "(S3-compatible object storage, for workers on several hosts; see `LTH_S3_*`).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server (MinIO: `http://minio:9000`); unset "
        "means AWS S3.",
    )
    s3_public_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint that presigned download URLs name, when clients reach the object "
        "store at another address than the service does (default `LTH_S3_ENDPOINT_URL`).",
    )
    s3_region: str = Field(default="us-east-1", description="Region of the S3 bucket.")
    s3_access_key_id: str | None = Field(
        default=None,
        description="S3 access key; unset uses boto3's usual chain (`AWS_*` variables, "
        "instance roles …).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key, with `LTH_S3_ACCESS_KEY_ID`."
    )
    artifact_redirect: Literal["stream", "presigned"] = Field(
        default="stream",
        description="How artifact downloads are served: `stream` through the API, or "
        "`presigned`: 307 to a short-lived presigned URL of the object store (s3:// only).",
    )
    artifact_presign_seconds: int = Field(
        default=300, ge=1, le=7 * 24 * 3600, description="Lifetime of a presigned download URL."
    )
    artifact_ttl_days: float | None = Field(
        default=None,
        gt=0,
        description="Finished jobs older than this many days are deleted with their artifacts "
        "(unset: kept until `DELETE /v1/jobs/{id}`).",
    )
    artifact_sync_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a worker publishes a running job's new files (checkpoints, "
        "finished rounds) from its scratch folder to the store; also at every round's end.",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda data: [Path("/usr/share/datasets"), data["home"] / "datasets"],
        description="Colon-separated directories that file dataset URIs (`idx:///…`, `npz:///…`) "
        "and `model.weights` may point into; anything else is rejected at submission.",
    )
    auth: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description="`disabled` maps every request to one local tenant: for a laptop only.",
    )
    local_tenant: str = Field(
        default="local", description="Tenant name used for every request when auth is disabled."
    )
    max_concurrent_jobs_per_tenant: int = Field(
        default=4, ge=1, description="Queued plus running jobs a tenant may have (429 beyond)."
    )
    max_upload_bytes: int = Field(
        default=512 * MiB, ge=1, description="Largest dataset upload accepted (413 beyond)."
    )
    max_dataset_bytes: int = Field(
        default=4096 * MiB,
        ge=1,
        description="Largest uncompressed size of an uploaded dataset's arrays together (what a "
        "worker loads into memory); an upload declaring or decompressing to more is refused "
        "(422) before it is read into memory.",
    )
    max_model_bytes: int = Field(
        default=512 * MiB,
        ge=1,
        description="Largest model upload accepted (an ONNX model or safetensors weights; 413 "
        "beyond).",
    )
    max_classes: int = Field(
        default=100_000,
        ge=2,
        description="Labels of an uploaded dataset must be integers from 0 to this minus one "
        "(422 otherwise).",
    )
    max_body_bytes: int = Field(
        default=1 * MiB,
        ge=1,
        description="Largest request body accepted outside dataset uploads (job specs and other "
        "JSON), counted as it arrives, chunked bodies included (413 beyond); uploads have "
        "`LTH_MAX_UPLOAD_BYTES`.",
    )
    max_steps_per_job: int = Field(
        default=5_000_000,
        ge=1,
        description="Most training iterations one job may run over all rounds and controls. "
        "Checked at submission for `it` lengths; the worker checks `ep` lengths once it knows "
        "the dataset size.",
    )
    max_parameters: int = Field(
        default=200_000_000,
        ge=1,
        description="Largest model (trainable parameters) a job may build. Checked at "
        "submission for the built-in architectures (counted from the spec); the worker checks "
        "torchvision models too.",
    )
    allow_download: bool = Field(
        default=False,
        description="Whether workers may download `torchvision://` datasets from the internet.",
    )
    webhook_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names a job's `webhook_url` may point to; empty "
        "refuses every webhook.",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signing secret of completion webhooks (Standard Webhooks, `whsec_` + "
        "base64); webhooks are refused while unset.",
    )
    webhook_attempts: int = Field(
        default=5, ge=1, le=20, description="Deliveries tried per webhook (backoff 1, 2, 4 … s)."
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the HTTP server binds to.")
    migrate_on_start: bool = Field(
        default=True, description="Apply database migrations when the app starts."
    )
    job_time_limit_s: int = Field(
        default=3 * 24 * 3600,
        ge=60,
        description="Longest a job may run; the broker's redelivery timeout is twice this.",
    )
    heartbeat_seconds: float = Field(
        default=1.0, gt=0, description="How often a running job writes progress and liveness."
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A running job without a heartbeat for this long has lost its worker: it is "
        "enqueued again and resumes from its last checkpoint.",
    )
    requeue_queued_after_s: float = Field(
        default=300.0,
        gt=0,
        description="A job queued this long without a worker taking it is enqueued again (a lost "
        "broker message); safe, since claims are compare-and-set.",
    )
    reconcile_every_s: float = Field(
        default=15.0, gt=0, description="How often the API looks for jobs to re-enqueue."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Most attempts a job gets: when this many of its workers were lost, it "
        "fails with code `too_many_attempts`.",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads per training job. 0: the host's usable cores are shared among "
        "its running jobs, re-divided about once a second as jobs start and end, so a job alone "
        "uses them all and concurrent jobs never fight over cores; N > 0: every job uses "
        "exactly N threads.",
    )
    worker_concurrency: int = Field(
        default=0,
        ge=0,
        description="Jobs one worker runs at once (one process each). 0: one per usable CPU core "
        "for a CPU worker, 1 for a worker pinned to a GPU with `--gpu N`; `lth worker "
        "--concurrency N` overrides it.",
    )
    worker_queues: Annotated[list[Literal["cpu", "gpu", "any"]], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated queues a worker consumes: `cpu` (jobs with `training.device"
        ": cpu`), `gpu` (`cuda`), `any` (`auto`). Empty: `gpu,any` with `--gpu N`, else "
        "`cpu,any`; `lth worker --queue` overrides it.",
    )
    job_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Scheduling niceness of the processes that train jobs: on a machine that "
        "also serves the API, requests are answered first and training takes the rest of the "
        "CPU (on a machine of its own a job still gets every idle cycle). 0 trains at the "
        "API's priority.",
    )
    job_sched_idle: bool = Field(
        default=True,
        description="Train under Linux's `SCHED_IDLE` policy as well: only on CPU time no other "
        "process wants, preempted at once by the API's requests (niceness alone lets a trainer "
        "finish its time slice first); a job alone on its machine still gets every core. Its "
        "heartbeats keep the normal policy.",
    )
    worker_name: str | None = Field(
        default=None, description="Name a worker reports (default: celery's host name)."
    )
    sse_poll_seconds: float = Field(
        default=0.5, gt=0, description="How often an SSE stream polls the events table."
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, home: Path) -> Path:
        return home.expanduser()

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        return _split(value, ":")

    @field_validator("webhook_allowlist", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("artifact_root", mode="after")
    @classmethod
    def _expand_artifacts(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("data_roots", mode="after")
    @classmethod
    def _expand_roots(cls, paths: list[Path]) -> list[Path]:
        return [path.expanduser() for path in paths]

    @field_validator("artifact_url", mode="after")
    @classmethod
    def _check_artifact_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("file://", "s3://")):
            raise ValueError("must be file:///<dir> or s3://<bucket>/<prefix>")
        if url is not None and url.startswith("s3://") and not url.removeprefix("s3://").strip("/"):
            raise ValueError("s3:// needs a bucket: s3://<bucket>/<prefix>")
        return url

    @model_validator(mode="after")
    def _presigned_needs_s3(self) -> Settings:
        if self.artifact_redirect == "presigned" and not self.artifact_store_url.startswith(
            "s3://"
        ):
            raise ValueError("LTH_ARTIFACT_REDIRECT=presigned needs an s3:// LTH_ARTIFACT_URL")
        return self

    @property
    def artifact_store_url(self) -> str:
        """``LTH_ARTIFACT_URL``, or the local artifact root as a file:// URL."""
        return self.artifact_url or self.artifact_root.resolve().as_uri()

    @property
    def worker_transaction_timeout_s(self) -> float:
        """How long a worker's PostgreSQL session may sit idle inside a transaction before the
        server ends it: a quarter of ``stale_after_s``. A worker's transactions last
        milliseconds; one frozen mid-transaction (stopped, swapped out) would otherwise keep
        its job's row locked, and the worker taking the job over would wait on it forever."""
        return self.stale_after_s / 4

    @property
    def scratch_root(self) -> Path:
        """Where a worker trains its jobs before publishing them, one folder per job."""
        return self.home / "scratch"

    @property
    def cache_root(self) -> Path:
        """Where a worker keeps uploaded datasets and models fetched from the store, by sha256."""
        return self.home / "cache"

    @property
    def private_roots(self) -> list[Path]:
        """The service's own folders, never readable through a file URI even inside a data root
        (uploads are reached by ``dataset://``/``model://``, which check their owner)."""
        return [
            self.upload_root,
            self.model_root,
            self.artifact_root,
            self.scratch_root,
            self.cache_root,
        ]

    @property
    def upload_root(self) -> Path:
        """Where the API receives dataset uploads before they go to the artifact store."""
        return self.home / "datasets"

    @property
    def model_root(self) -> Path:
        """Where the API receives model uploads before they go to the artifact store."""
        return self.home / "models"
