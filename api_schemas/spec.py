"""The job specification: what to prune, on which data, how to train and how to prune.

Every default is the setting of Frankle & Carbin (ICLR 2019) for LeNet-300-100 on MNIST, so that the
minimal spec ``{"model": {"arch": "lenet_300_100"}, "dataset": {"uri": ...}}`` runs the paper's
experiment. The spec is the one contract shared by the HTTP edge, the worker and the engine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from api_schemas.steps import Step, StepCount, comparable
from api_schemas.synthetic import parse_synthetic
from api_schemas.text import Text

#: Built-in architectures (the engine's registry holds exactly these names); any torchvision
#: classification model is also accepted as ``torchvision:<name>``.
ARCHITECTURES: dict[str, str] = {
    "lenet_300_100": "LeNet-300-100, fully connected 300-100 (Frankle & Carbin 2019, Figure 2)",
    "mlp": "multi-layer perceptron with the hidden sizes given in `hidden_sizes`",
    "conv2": "Conv-2: 64-64 conv, max pool, fc 256-256 (Frankle & Carbin 2019, CIFAR-10)",
    "conv4": "Conv-4: 64-64, 128-128 conv pairs with max pool, fc 256-256",
    "conv6": "Conv-6: 64-64, 128-128, 256-256 conv pairs with max pool, fc 256-256",
    "vgg11": "VGG-11 for CIFAR with batch norm and one linear output layer",
    "vgg13": "VGG-13 for CIFAR with batch norm and one linear output layer",
    "vgg16": "VGG-16 for CIFAR with batch norm and one linear output layer",
    "vgg19": "VGG-19 for CIFAR with batch norm and one linear output layer",
    "resnet20": "ResNet-20 for CIFAR (He et al. 2016); `width` sets the first stage's channels",
    "resnet56": "ResNet-56 for CIFAR (He et al. 2016); `width` sets the first stage's channels",
}
TORCHVISION_PREFIX = "torchvision:"

#: Dataset URI schemes the engine reads. ``dataset://<id>`` names an uploaded dataset.
DATASET_SCHEMES = (
    "torchvision",
    "idx",
    "npz",
    "safetensors",
    "imagefolder",
    "synthetic",
    "dataset",
)
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PruneRate = Annotated[float, Field(ge=0.0, lt=1.0)]

#: Labels: a few short key/value pairs (they are stored with every job and filtered on).
MAX_LABELS = 50
LABEL_KEY_MAX_LENGTH = 100
LABEL_VALUE_MAX_LENGTH = 200
LabelKey = Annotated[Text, Field(min_length=1, max_length=LABEL_KEY_MAX_LENGTH)]
LabelValue = Annotated[Text, Field(max_length=LABEL_VALUE_MAX_LENGTH)]


def field_error(model: str, loc: tuple[str, ...], message: str, value: object) -> ValidationError:
    """A validation error pinned to ``loc`` (relative to the model raising it), so that a
    cross-field rule still names the exact field path in the API's 422 response."""
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", message),
                loc=loc,
                input=value,
            )
        ],
    )


class _Strict(BaseModel):
    """Unknown fields are errors (a typo must not silently fall back to a default), and values
    are not coerced: ``"seed": "0"`` is refused rather than guessed at. Numbers are finite:
    Python's JSON reads ``Infinity`` and ``NaN``, but no other JSON reader (PostgreSQL's JSONB,
    the clients) accepts them back, and no setting means them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: ``model.arch`` of a job whose architecture is an uploaded graph (``model.uri``); filled in
#: when ``uri`` is given and ``arch`` left out.
UPLOADED_ARCH = "uploaded"
#: ``model://<id>`` names an upload (POST /v1/models/uploads): a graph for ``model.uri``,
#: starting weights for ``model.weights``.
MODEL_SCHEME = "model"


class ModelSpec(_Strict):
    arch: Text = Field(
        description="A built-in architecture (see GET /v1/models) or `torchvision:<name>`; "
        f"left out (or `{UPLOADED_ARCH}`) when `uri` names your own model.",
        examples=["lenet_300_100", "resnet20", "torchvision:resnet18"],
    )
    uri: Text | None = Field(
        default=None,
        description="Your own architecture and starting weights: `model://<id>` of an uploaded "
        "ONNX model (POST /v1/models/uploads), or an `.onnx` path under a data root. Replaces "
        "`arch`.",
        examples=["model://mdl_01hzy3k7q9v8w2x4c6b0n5m1t8"],
    )
    width: int | None = Field(
        default=None,
        gt=0,
        description="ResNet: channels of the first stage (default 16, the CIFAR ResNet's). "
        "Other architectures reject it.",
    )
    hidden_sizes: list[Annotated[int, Field(gt=0)]] | None = Field(
        default=None,
        description="mlp only (required there): the widths of the hidden layers, e.g. [300, 100].",
    )
    weights: Text | None = Field(
        default=None,
        description="Optional starting weights: a safetensors file (`model://<id>` of an upload, "
        "a path under a data root, or `file:///...`) whose keys and shapes match the model's "
        "state dict. Default: the architecture's standard random initialisation, seeded by "
        "`seed`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _arch_of_upload(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("uri") is not None and "arch" not in data:
            return {**data, "arch": UPLOADED_ARCH}
        return data

    @model_serializer(mode="wrap")
    def _without_unset_uri(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``uri`` appears only when set, so the canonical form (and the ``spec_hash``) of every
        spec without one is what it was before the field existed."""
        data: dict[str, Any] = handler(self)
        if data.get("uri", 0) is None:
            del data["uri"]
        return data

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch in ARCHITECTURES or arch == UPLOADED_ARCH:
            return arch
        if arch.startswith(TORCHVISION_PREFIX) and len(arch) > len(TORCHVISION_PREFIX):
            return arch
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)} "
            f"or '{TORCHVISION_PREFIX}<name>' for a torchvision classification model"
        )

    @field_validator("uri")
    @classmethod
    def _model_uri(cls, uri: str | None) -> str | None:
        if uri is None or urlsplit(uri).scheme == MODEL_SCHEME or uri.startswith("/"):
            return uri
        if urlsplit(uri).scheme == "file":
            return uri
        raise ValueError(
            f"{uri!r}: use model://<id> (an upload, see GET /v1/models/uploads) or the path of "
            "an .onnx file"
        )

    @model_validator(mode="after")
    def _options_fit_arch(self) -> ModelSpec:
        if self.uri is not None and self.arch != UPLOADED_ARCH:
            raise field_error(
                "ModelSpec",
                ("arch",),
                f"uri names the whole model; leave arch out (it is {self.arch!r})",
                self.arch,
            )
        if self.uri is None and self.arch == UPLOADED_ARCH:
            raise field_error(
                "ModelSpec", ("uri",), f"arch {UPLOADED_ARCH!r} needs uri: model://<id>", None
            )
        if self.arch == "mlp" and not self.hidden_sizes:
            raise field_error(
                "ModelSpec",
                ("hidden_sizes",),
                "arch 'mlp' needs hidden_sizes, e.g. [300, 100]",
                self.hidden_sizes,
            )
        if self.arch != "mlp" and self.hidden_sizes is not None:
            raise field_error(
                "ModelSpec",
                ("hidden_sizes",),
                f"hidden_sizes applies to arch 'mlp' only, not {self.arch!r}",
                self.hidden_sizes,
            )
        if self.width is not None and self.arch not in ("resnet20", "resnet56"):
            raise field_error(
                "ModelSpec",
                ("width",),
                f"width applies to resnet20/resnet56 only, not {self.arch!r}",
                self.width,
            )
        return self


class DatasetSpec(_Strict):
    uri: Text = Field(
        description="Where the data is: `torchvision://FashionMNIST`, `idx:///dir`, "
        "`npz:///file.npz`, `safetensors:///file`, `imagefolder:///dir`, `dataset://<id>` "
        "(an upload) or `synthetic://?classes=10&shape=1,28,28&train=2000&test=500`.",
        examples=["idx:///usr/share/datasets/fashion-mnist", "torchvision://CIFAR10"],
    )
    validation_size: int = Field(
        default=5000,
        ge=0,
        description="Training examples held out (chosen by `seed`) to find the early-stopping "
        "iteration and to pick the winning ticket; the paper held out 5,000. 0 disables it.",
    )
    augment: bool = Field(
        default=False,
        description="CIFAR-style augmentation on the training batches: 4-pixel padded random "
        "crop and horizontal flip, run batch-wise on the training device.",
    )
    normalize: bool = Field(
        default=True,
        description="Standardise each channel with the training split's mean and std.",
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        scheme = urlsplit(uri).scheme
        if scheme not in DATASET_SCHEMES:
            raise ValueError(
                f"unknown dataset scheme {scheme + '://' if scheme else uri!r}; "
                f"use one of {', '.join(s + '://' for s in DATASET_SCHEMES)}"
            )
        if scheme == "synthetic":
            parse_synthetic(urlsplit(uri).query)
        if scheme == "torchvision":
            name = urlsplit(uri).netloc or urlsplit(uri).path.strip("/")
            if name not in TORCHVISION_DATASETS:
                raise ValueError(
                    f"unknown torchvision dataset {name!r}; use one of "
                    f"{', '.join(TORCHVISION_DATASETS)}"
                )
        return uri


class TrainingSpec(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        default="adam", description="sgd (with `momentum`, `nesterov`), adam or adamw."
    )
    lr: float = Field(default=1.2e-3, gt=0, description="Peak learning rate.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    nesterov: bool = Field(default=False, description="Nesterov momentum (sgd only).")
    weight_decay: float = Field(
        default=0.0, ge=0, description="L2 penalty (sgd, adam) or decoupled decay (adamw)."
    )
    batch_size: int = Field(
        default=60, gt=0, le=65536, description="Training examples per optimizer step."
    )
    steps: Step = Field(default="50000it", description="Training length of every round.")
    schedule: Literal["constant", "multistep", "cosine"] = Field(
        default="constant",
        description="Learning rate after warm-up: constant, multiplied by `gamma` at each of "
        "`milestones`, or cosine decay to zero at `steps`.",
    )
    milestones: list[Step] = Field(
        default_factory=list,
        description="multistep: the steps at which the learning rate is multiplied by `gamma`.",
    )
    gamma: float = Field(default=0.1, gt=0, description="multistep: the decay factor.")
    warmup: Step = Field(default="0it", description="Linear warm-up from 0 to `lr`.")
    eval_every: Step = Field(
        default="1000it",
        description="Evaluate on the validation and test splits this often (and at the end).",
    )
    checkpoint_every: Step = Field(
        default="1000it", description="Save a resumable checkpoint this often (and at the end)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present, else CPU."
    )
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: autocast the forward pass on CUDA (ignored on CPU)."
    )

    @model_validator(mode="after")
    def _lengths_fit(self) -> TrainingSpec:
        for name in ("steps", "eval_every", "checkpoint_every"):
            if StepCount.parse(getattr(self, name)).amount == 0:
                raise field_error(
                    "TrainingSpec",
                    (name,),
                    f"{name} must be at least one iteration",
                    getattr(self, name),
                )
        for name in ("warmup", "eval_every"):
            value = getattr(self, name)
            if comparable(value, self.steps) and (
                StepCount.parse(value).amount > StepCount.parse(self.steps).amount
            ):
                raise field_error(
                    "TrainingSpec",
                    (name,),
                    f"{name} ({value}) is longer than steps ({self.steps})",
                    value,
                )
        if self.schedule == "multistep" and not self.milestones:
            raise field_error(
                "TrainingSpec",
                ("milestones",),
                "schedule 'multistep' needs milestones, e.g. ['32000it', '48000it']",
                self.milestones,
            )
        if self.schedule != "multistep" and self.milestones:
            raise field_error(
                "TrainingSpec",
                ("milestones",),
                "milestones apply to schedule 'multistep' only",
                self.milestones,
            )
        return self


class LayerRates(_Strict):
    linear: PruneRate = Field(default=0.2, description="Fraction of surviving fc weights pruned.")
    conv: PruneRate = Field(default=0.1, description="Fraction of surviving conv weights pruned.")
    output: PruneRate | None = Field(
        default=None,
        description="Rate for the output layer; default half the rate of its layer type.",
    )


Control = Literal["random_reinit", "random_prune"]


class PruningSpec(_Strict):
    strategy: Literal["layerwise", "global"] = Field(
        default="layerwise",
        description="layerwise: each layer loses `rates` of its survivors; global: one magnitude "
        "threshold across all prunable weights removes `rate` of all survivors.",
    )
    rates: LayerRates = Field(default_factory=LayerRates, description="layerwise rates.")
    rate: PruneRate = Field(default=0.2, description="global: fraction of survivors per round.")
    rounds: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Pruning rounds after the dense training (round 0), as open_lth's levels.",
    )
    one_shot: bool = Field(
        default=False,
        description="Prune straight to `target_density` in a single round instead of iterating.",
    )
    target_density: Fraction | None = Field(
        default=None,
        description="Stop once the prunable weights' density is at or below this fraction.",
    )
    max_accuracy_drop: Fraction | None = Field(
        default=None,
        description="Stop after a round whose accuracy (validation when held out, else test) is "
        "more than this (a fraction, 0.02 = 2 points) below the dense net's.",
    )
    rewind_to: Step = Field(
        default="0it",
        description="'0it' resets survivors to the initialisation (the original lottery ticket); "
        "a later step such as '500it' is late rewinding (Frankle et al. 2020).",
    )
    retrain: Literal["weight_rewind", "lr_rewind", "finetune"] = Field(
        default="weight_rewind",
        description="weight_rewind: reset survivors to the rewind point (lottery ticket); "
        "lr_rewind: keep trained weights, replay the lr schedule from the rewind step (Renda et "
        "al. 2020); finetune: keep trained weights, train at a small constant lr.",
    )
    finetune_lr: float | None = Field(
        default=None, gt=0, description="finetune: the constant lr; default the schedule's last lr."
    )
    exclude: list[Text] = Field(
        default_factory=list,
        description="Layer names (e.g. 'fc' or 'fc.weight') never pruned.",
    )
    controls: list[Control] = Field(
        default_factory=list,
        description="Baselines trained like the ticket at every round: random_reinit (same mask, "
        "fresh random init) and random_prune (random mask of the same per-layer density).",
    )
    ticket_tolerance: Fraction = Field(
        default=0.005,
        description="The winning ticket is the sparsest round whose accuracy (validation when "
        "held out, else test) is at most this far below the dense net's.",
    )

    def trainings(self) -> int:
        """Networks a job trains at most: the dense one, then in each pruning round the ticket
        and each control (one round when one-shot)."""
        rounds = 1 if self.one_shot else self.rounds
        return 1 + rounds * (1 + len(self.controls))

    @model_validator(mode="after")
    def _consistent(self) -> PruningSpec:
        if self.one_shot and self.target_density is None:
            raise field_error(
                "PruningSpec", ("target_density",), "one_shot pruning needs target_density", None
            )
        if len(set(self.controls)) != len(self.controls):
            raise field_error(
                "PruningSpec", ("controls",), "controls lists a control twice", self.controls
            )
        return self


class JobSpec(_Strict):
    model: ModelSpec
    dataset: DatasetSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    seed: int = Field(default=0, ge=0, lt=2**31, description="Seeds init, data order and splits.")
    replicates: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Independent IMP chains (own initialisation and data order, seeds derived "
        "from `seed`; replicate 0 uses `seed` itself), trained together round by round. Results "
        "come per replicate and as mean ± std; the winning ticket is chosen on the mean "
        "validation accuracy. The paper averages five.",
    )
    reuse: bool = Field(
        default=True,
        description="Reuse trainings an earlier job of the same tenant already ran with exactly "
        "the same inputs (model, weights, seed, data, training and the pruning of the rounds "
        "before), instead of training them again. false trains everything.",
    )
    name: Text | None = Field(default=None, max_length=200, description="A human-readable name.")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description=f"Free-form labels to filter jobs by: at most {MAX_LABELS}, keys of 1 to "
        f"{LABEL_KEY_MAX_LENGTH} characters, values of at most {LABEL_VALUE_MAX_LENGTH}.",
    )
    webhook_url: Text | None = Field(
        default=None,
        max_length=2000,
        description="Called (POST, signed as Standard Webhooks) when the job succeeds, fails or "
        "is cancelled. Its host must be in the service's webhook allowlist. Default: none.",
        examples=["https://ci.example.com/hooks/lth"],
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook_url must be an http(s) URL with a host, not {url!r}")
        return url

    @model_validator(mode="after")
    def _rewind_within_training(self) -> JobSpec:
        rewind, steps = (
            StepCount.parse(self.pruning.rewind_to),
            StepCount.parse(self.training.steps),
        )
        if rewind.amount > 0 and rewind.unit == steps.unit and rewind.amount >= steps.amount:
            raise field_error(
                "JobSpec",
                ("pruning", "rewind_to"),
                f"rewind_to ({rewind}) must come before the end of training "
                f"(training.steps = {steps})",
                self.pruning.rewind_to,
            )
        return self

    def trainings(self) -> int:
        """Networks the job trains at most, over every replicate."""
        return self.replicates * self.pruning.trainings()

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec, defaults included: equal hashes, equal jobs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
