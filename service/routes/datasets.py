"""/v1/datasets: upload (streamed, capped, validated), list, get and delete datasets."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from api_schemas.jobs import Dataset, DatasetFormat, DatasetList
from api_schemas.problem import FieldError
from service.dataset_files import DatasetInfo, DatasetLimits, InvalidDatasetError, inspect_dataset
from service.deps import CurrentTenant, SessionDep, StateDep
from service.openapi import problems
from service.problems import ProblemError, not_found, validation_problem
from service.state import ServiceState
from service.tenant_uploads import remove_upload, save_upload, upload_key
from service.uploads import ReceivedFile, receive_file
from service.views import dataset_view
from store import datasets as dataset_store
from store.ids import new_id
from store.tables import DatasetRow, Tenant

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["datasets"])

_FORMATS: dict[str, DatasetFormat] = {".npz": "npz", ".safetensors": "safetensors"}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "An .npz or .safetensors file with x_train, "
                            "y_train, x_test, y_test.",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": 200,
                            "description": "Display name (default: the file name).",
                        },
                    },
                }
            }
        },
    }
}


def _field_error(loc: str, msg: str, kind: str) -> ProblemError:
    return validation_problem([FieldError(loc=loc, msg=msg, type=kind)])


def _format_of(filename: str) -> DatasetFormat:
    for suffix, fmt in _FORMATS.items():
        if filename.lower().endswith(suffix):
            return fmt
    raise _field_error(
        "file", f"{filename!r}: upload a .npz or .safetensors file", "unsupported_format"
    )


def _save(
    state: ServiceState,
    tenant: Tenant,
    upload: ReceivedFile,
    fmt: DatasetFormat,
    info: DatasetInfo,
    name: str,
) -> Dataset:
    dataset_id = new_id("ds")
    key = upload_key(tenant.id, "datasets", dataset_id, fmt)

    def record(session: Session, key: str) -> DatasetRow:
        return dataset_store.add_dataset(
            session,
            dataset_id=dataset_id,
            tenant_id=tenant.id,
            name=name,
            format=fmt,
            path=key,
            size=upload.size,
            sha256=upload.sha256,
            meta=info.as_metadata(),
        )

    return save_upload(state, upload, key, record, dataset_view)


@router.post(
    "/datasets",
    status_code=201,
    name="upload_dataset",
    summary="Upload a dataset",
    description="Multipart upload of an .npz (no pickles) or .safetensors file holding "
    "`x_train`, `y_train`, `x_test`, `y_test`: features uint8 or finite floats, labels integers "
    "from 0 below `LTH_MAX_CLASSES`, at most `LTH_MAX_DATASET_BYTES` uncompressed. Validated "
    "before it is stored; use the answer's `uri` as `dataset.uri` in a job.",
    openapi_extra=_UPLOAD_BODY,
    responses=problems(400, 401, 413, 415, 422),
)
async def upload_dataset(
    request: Request, response: Response, tenant: CurrentTenant, state: StateDep
) -> Dataset:
    settings = state.settings
    form = await receive_file(
        request,
        file_field="file",
        dest_dir=settings.upload_root / tenant.id,
        max_file_bytes=settings.max_upload_bytes,
    )
    upload = form.file
    if upload is None:
        raise _field_error("file", "attach the dataset as the multipart part `file`", "missing")
    try:
        fmt = _format_of(upload.filename)
        name = form.fields.get("name") or upload.filename
        if len(name) > 200:
            raise _field_error("name", "at most 200 characters", "too_long")
        limits = DatasetLimits(settings.max_dataset_bytes, settings.max_classes)
        try:
            info = await anyio.to_thread.run_sync(inspect_dataset, upload.path, fmt, limits)
        except InvalidDatasetError as exc:
            raise _field_error("file", str(exc), exc.kind) from exc
        dataset = await anyio.to_thread.run_sync(_save, state, tenant, upload, fmt, info, name)
    finally:
        upload.path.unlink(missing_ok=True)  # a no-op once renamed into place
    response.headers["Location"] = str(request.url_for("get_dataset", dataset_id=dataset.id))
    return dataset


@router.get("/datasets", name="list_datasets", summary="Your datasets", responses=problems(401))
def list_datasets(session: SessionDep, tenant: CurrentTenant) -> DatasetList:
    return DatasetList(
        data=[dataset_view(r) for r in dataset_store.list_datasets(session, tenant.id)]
    )


@router.get(
    "/datasets/{dataset_id}",
    name="get_dataset",
    summary="One dataset",
    responses=problems(401, 404),
)
def get_dataset(dataset_id: str, session: SessionDep, tenant: CurrentTenant) -> Dataset:
    row = dataset_store.get_dataset(session, tenant.id, dataset_id)
    if row is None:
        raise not_found("dataset")
    return dataset_view(row)


@router.delete(
    "/datasets/{dataset_id}",
    status_code=204,
    name="delete_dataset",
    summary="Delete a dataset",
    description="Jobs already queued with it will fail when they start.",
    responses=problems(401, 404),
)
def delete_dataset(
    dataset_id: str, session: SessionDep, tenant: CurrentTenant, state: StateDep
) -> Response:
    row = dataset_store.delete_dataset(session, tenant.id, dataset_id)
    if row is None:
        raise not_found("dataset")
    session.commit()
    remove_upload(state, row.path, f"dataset {dataset_id}")
    return Response(status_code=204)
