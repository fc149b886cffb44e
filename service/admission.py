"""Checks a valid spec must also pass to be accepted *here*: its files lie inside the data
roots, an uploaded dataset is the caller's, and the job is not longer than this service allows.

They need the settings, the caller and the database, which the spec's own validators cannot see.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from api_schemas.problem import FieldError
from api_schemas.spec import JobSpec
from api_schemas.steps import StepCount, to_iterations
from service.dataset_sizes import train_size
from service.settings import Settings
from store.datasets import dataset_id_from_uri, get_dataset
from store.tables import Tenant
from store.webhooks import host_allowed

FILE_SCHEMES = ("idx", "npz", "safetensors", "imagefolder")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def path_error(raw: str, settings: Settings) -> str | None:
    """Why ``raw`` may not be read by a job, or None when it lies inside a data root.

    Symlinks are resolved first, and tenants' upload folders are excluded (an upload is reached
    only through ``dataset://<id>``, which checks ownership).
    """
    if not raw.startswith("/"):
        return f"{raw!r} is not an absolute path"
    if "\x00" in raw:
        return f"{raw!r} contains a NUL byte"
    path = Path(os.path.realpath(raw))
    roots = [Path(os.path.realpath(root)) for root in settings.data_roots]
    if not any(_inside(path, root) for root in roots):
        listed = ", ".join(str(root) for root in settings.data_roots) or "(none configured)"
        return f"{raw!r} is outside the data roots this service reads: {listed}"
    uploads = Path(os.path.realpath(settings.upload_root))
    if _inside(path, uploads) and path != uploads:
        return f"{raw!r} is inside the upload area; name an upload as dataset://<id>"
    return None


def _file_uri_path(uri: str) -> str:
    parts = urlsplit(uri)
    return unquote(parts.netloc + parts.path) if parts.netloc else unquote(parts.path)


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
        problem = path_error(_file_uri_path(uri), settings)
        if problem:
            errors.append(FieldError(loc="dataset.uri", msg=problem, type="path_not_allowed"))
    weights = spec.model.weights
    if weights is not None:
        raw = _file_uri_path(weights) if weights.startswith("file://") else weights
        problem = path_error(raw, settings)
        if problem:
            errors.append(FieldError(loc="model.weights", msg=problem, type="path_not_allowed"))
    if spec.webhook_url is not None:
        problem = webhook_error(spec.webhook_url, settings)
        if problem:
            errors.append(FieldError(loc="webhook_url", msg=problem, type="webhook_not_allowed"))
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
