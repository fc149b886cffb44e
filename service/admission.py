"""Checks a valid spec must also pass to be accepted *here*: its files lie inside the data
roots, an uploaded dataset or model is the caller's (and of the kind its field takes), and the
job is not longer nor its model larger than this service allows.

They need the settings, the caller and the database, which the spec's own validators cannot see.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from api_schemas.confine import PathRefusedError, confine
from api_schemas.model_size import parameter_count
from api_schemas.problem import FieldError
from api_schemas.spec import MODEL_SCHEME, UPLOADED_ARCH, JobSpec
from api_schemas.steps import StepCount, to_iterations
from api_schemas.synthetic import parse_synthetic
from service.dataset_sizes import train_size
from service.settings import Settings
from store.datasets import dataset_id_from_uri, get_dataset
from store.models import get_model_by_uri, model_id_from_uri
from store.tables import Tenant
from store.webhooks import host_allowed

FILE_SCHEMES = ("idx", "npz", "safetensors", "imagefolder")
#: Example shape and class count of the torchvision datasets the engine reads.
TORCHVISION_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "MNIST": ((1, 28, 28), 10),
    "FashionMNIST": ((1, 28, 28), 10),
    "KMNIST": ((1, 28, 28), 10),
    "CIFAR10": ((3, 32, 32), 10),
    "CIFAR100": ((3, 32, 32), 100),
    "SVHN": ((3, 32, 32), 10),
}
#: Stand-ins for an input or class count not known at submission: the smallest conceivable,
#: so the count is a lower bound (the worker checks the exact one before it builds).
SMALLEST_INPUT, FEWEST_CLASSES = (1, 1, 1), 1


def path_error(
    location: str, settings: Settings, schemes: Collection[str] = ("file",)
) -> str | None:
    """Why a job may not read ``location`` (a path or a URI of ``schemes``), or None.

    The worker confines the same string with the same function (:mod:`api_schemas.confine`),
    so what passes here is the file it opens. The service's own folders are excluded: an upload
    is reached only through ``dataset://<id>`` or ``model://<id>``, which check ownership.
    """
    try:
        confine(location, settings.data_roots, settings.private_roots, schemes=schemes)
    except PathRefusedError as error:
        return str(error)
    return None


def total_iterations(spec: JobSpec) -> int | None:
    """Upper bound of iterations the job trains, or None when it is given in epochs."""
    steps = StepCount.parse(spec.training.steps)
    if steps.unit != "it":
        return None
    return steps.amount * spec.trainings()


def check_spec(
    spec: JobSpec, tenant: Tenant, session: Session, settings: Settings
) -> list[FieldError]:
    """Every reason this service refuses ``spec``, as field errors (empty: accept)."""
    errors: list[FieldError] = []
    uri = spec.dataset.uri
    scheme = urlsplit(uri).scheme
    if scheme == "dataset":
        dataset_id = dataset_id_from_uri(uri)
        if dataset_id is None or get_dataset(session, tenant.id, dataset_id) is None:
            errors.append(
                FieldError(
                    loc="dataset.uri",
                    msg=f"no uploaded dataset {dataset_id!r}; see GET /v1/datasets",
                    type="unknown_dataset",
                )
            )
    elif scheme in FILE_SCHEMES:
        problem = path_error(uri, settings, schemes=(scheme,))
        if problem:
            errors.append(FieldError(loc="dataset.uri", msg=problem, type="path_not_allowed"))
    errors += upload_errors(spec, tenant, session, settings)
    if spec.webhook_url is not None:
        problem = webhook_error(spec.webhook_url, settings)
        if problem:
            errors.append(FieldError(loc="webhook_url", msg=problem, type="webhook_not_allowed"))
    too_large = model_error(spec, session, tenant, settings)
    if too_large is not None:
        errors.append(too_large)
    if not errors:
        examples = train_size(uri, session, tenant)
        if examples is not None:
            return length_errors(spec, examples, settings)
    total = total_iterations(spec)
    if total is not None and total > settings.max_steps_per_job:
        errors.append(
            FieldError(
                loc="training.steps",
                msg=f"the job would train {total} iterations over all rounds and controls; "
                f"this service allows at most {settings.max_steps_per_job}",
                type="too_long",
            )
        )
    return errors


def _model_location(
    field: str, location: str, expected: str, tenant: Tenant, session: Session, settings: Settings
) -> FieldError | None:
    """Why ``field`` may not name ``location``: an upload of another kind or not the caller's,
    or a path outside the data roots."""
    if urlsplit(location).scheme != MODEL_SCHEME:
        problem = path_error(location, settings)
        return FieldError(loc=field, msg=problem, type="path_not_allowed") if problem else None
    row = get_model_by_uri(session, tenant.id, location)
    if row is None:
        message = f"no uploaded model {model_id_from_uri(location)!r}; see GET /v1/models/uploads"
        return FieldError(loc=field, msg=message, type="unknown_model")
    if row.format != expected:
        other = "model.uri" if row.format == "onnx" else "model.weights"
        message = f"{location} is a {row.format} upload: name it in {other}, not {field}"
        return FieldError(loc=field, msg=message, type="wrong_kind_of_model")
    return None


def upload_errors(
    spec: JobSpec, tenant: Tenant, session: Session, settings: Settings
) -> list[FieldError]:
    """``model.uri`` must be an ONNX model and ``model.weights`` safetensors weights, each an
    upload of the caller's or a file under a data root."""
    errors = []
    model = spec.model
    if model.uri is not None:
        error = _model_location("model.uri", model.uri, "onnx", tenant, session, settings)
        errors += [error] if error else []
    if model.weights is not None:
        error = _model_location(
            "model.weights", model.weights, "safetensors", tenant, session, settings
        )
        errors += [error] if error else []
    return errors


def _uploaded_model_error(
    spec: JobSpec, session: Session, tenant: Tenant, settings: Settings
) -> FieldError | None:
    """An uploaded graph larger than this service builds, or made for other inputs."""
    row = get_model_by_uri(session, tenant.id, spec.model.uri or "")
    if row is None or row.format != "onnx":
        return None  # reported by upload_errors, or a file the worker checks
    count = int(row.meta.get("parameters", 0))
    if count > settings.max_parameters:
        message = (
            f"the uploaded model has {count:,} parameters; this service builds at most "
            f"{settings.max_parameters:,}"
        )
        return FieldError(loc="model.uri", msg=message, type="too_large")
    expected, _ = data_shape(spec.dataset.uri, session, tenant)
    shape = row.meta.get("input_shape")
    if expected is not None and isinstance(shape, list) and tuple(shape) != tuple(expected):
        message = (
            f"the model takes examples of shape {tuple(shape)} but the dataset's have shape "
            f"{tuple(expected)}"
        )
        return FieldError(loc="model.uri", msg=message, type="shape_mismatch")
    return None


def data_shape(
    uri: str, session: Session, tenant: Tenant
) -> tuple[tuple[int, ...] | None, int | None]:
    """The example shape and class count behind ``uri`` when known without reading data."""
    parts = urlsplit(uri)
    if parts.scheme == "synthetic":
        try:
            params = parse_synthetic(parts.query)
        except ValueError:
            return None, None
        # Labels cycle through the classes, so a split smaller than them shows fewer.
        return params.shape, min(params.classes, max(params.train, params.test))
    if parts.scheme == "torchvision":
        return TORCHVISION_SHAPES.get(parts.netloc or parts.path.strip("/"), (None, None))
    if parts.scheme == "dataset":
        dataset_id = dataset_id_from_uri(uri)
        row = get_dataset(session, tenant.id, dataset_id) if dataset_id else None
        meta = row.meta if row is not None else {}
        shape, classes = meta.get("input_shape"), meta.get("num_classes")
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            shape = None
        return (tuple(shape) if shape else None), (classes if isinstance(classes, int) else None)
    return None, None


def model_error(
    spec: JobSpec, session: Session, tenant: Tenant, settings: Settings
) -> FieldError | None:
    """A built-in model with more parameters than this service builds, counted from the spec
    before any worker allocates it; torchvision models are counted by the worker."""
    model = spec.model
    if model.arch == UPLOADED_ARCH:
        return _uploaded_model_error(spec, session, tenant, settings)
    shape, classes = data_shape(spec.dataset.uri, session, tenant)
    count = parameter_count(
        model.arch,
        shape or SMALLEST_INPUT,
        classes or FEWEST_CLASSES,
        hidden_sizes=model.hidden_sizes,
        width=model.width,
    )
    if count is None or count <= settings.max_parameters:
        return None
    has = (
        f"has {count:,} parameters for inputs of shape {shape} and {classes} classes"
        if shape and classes
        else f"has at least {count:,} parameters"
    )
    message = f"{model.arch} {has}; this service builds at most {settings.max_parameters:,}"
    return FieldError(loc="model", msg=message, type="too_large")


def webhook_error(url: str, settings: Settings) -> str | None:
    """Why this service will not call ``url``, or None."""
    if settings.webhook_secret is None or not settings.webhook_allowlist:
        return "this service sends no webhooks (LTH_WEBHOOK_SECRET and LTH_WEBHOOK_ALLOWLIST unset)"
    if not host_allowed(url, settings.webhook_allowlist):
        hosts = ", ".join(settings.webhook_allowlist)
        return f"webhooks may only go to these hosts: {hosts}"
    return None


def length_errors(spec: JobSpec, examples: int, settings: Settings) -> list[FieldError]:
    """Checks that need the training-set size: hold-out, batch, epochs against iterations."""
    held, batch = spec.dataset.validation_size, spec.training.batch_size
    if held >= examples:
        message = f"holds out {held} of the {examples} training examples; hold out fewer"
        return [FieldError(loc="dataset.validation_size", msg=message, type="too_large")]
    if batch > examples - held:
        message = f"is larger than the {examples - held} training examples left after the hold-out"
        return [FieldError(loc="training.batch_size", msg=message, type="too_large")]
    per_epoch = (examples - held) // batch
    total = to_iterations(spec.training.steps, per_epoch)
    rewind = to_iterations(spec.pruning.rewind_to, per_epoch)
    errors = []
    if rewind > 0 and rewind >= total:
        message = (
            f"{spec.pruning.rewind_to} = {rewind} iterations is not before the end of training "
            f"({spec.training.steps} = {total} iterations at {per_epoch} per epoch)"
        )
        errors.append(FieldError(loc="pruning.rewind_to", msg=message, type="too_late"))
    trainings = spec.trainings()
    if total * trainings > settings.max_steps_per_job:
        message = (
            f"the job would train {total * trainings} iterations over all rounds and controls; "
            f"this service allows at most {settings.max_steps_per_job}"
        )
        errors.append(FieldError(loc="training.steps", msg=message, type="too_long"))
    return errors
