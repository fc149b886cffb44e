"""/v1/models: the built-in architectures, and /v1/models/uploads: a tenant's own models.

The uploads live under their own path segment so ``GET /v1/models/{name}`` keeps naming
architectures; ``uploads`` is no architecture's name.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from api_schemas.jobs import ModelFormat, ModelInfo, ModelList, UploadedModel, UploadedModelList
from api_schemas.problem import FieldError
from service.deps import CurrentTenant, SessionDep, StateDep
from service.model_catalog import catalog
from service.model_files import InvalidModelError, inspect_model
from service.openapi import problems
from service.problems import ProblemError, not_found, validation_problem
from service.state import ServiceState
from service.tenant_uploads import remove_upload, save_upload, upload_key
from service.uploads import ReceivedFile, receive_file
from store import models as model_store
from store.ids import new_id
from store.models import MODEL_ID_PREFIX, model_uri
from store.tables import ModelRow, Tenant

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["models"])

_FORMATS: dict[str, ModelFormat] = {".onnx": "onnx", ".safetensors": "safetensors"}
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
                            "description": "An .onnx model (architecture and weights) or "
                            ".safetensors starting weights for a built-in architecture.",
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


def _format_of(filename: str) -> ModelFormat:
    for suffix, fmt in _FORMATS.items():
        if filename.lower().endswith(suffix):
            return fmt
    raise _field_error(
        "file", f"{filename!r}: upload an .onnx or .safetensors file", "unsupported_format"
    )


def model_view(row: ModelRow) -> UploadedModel:
    """The API view of a model row."""
    meta = row.meta
    shape = meta.get("input_shape")
    return UploadedModel(
        id=row.id,
        name=row.name,
        format="onnx" if row.format == "onnx" else "safetensors",
        size=row.size,
        sha256=row.sha256,
        uri=model_uri(row.id),
        use_as="model.uri" if row.format == "onnx" else "model.weights",
        created_at=row.created_at,
        parameters=int(meta.get("parameters", 0)),
        input_shape=[int(n) for n in shape] if isinstance(shape, list) else None,
        operators=[str(op) for op in meta.get("operators", [])],
    )


def _save(
    state: ServiceState,
    tenant: Tenant,
    upload: ReceivedFile,
    fmt: ModelFormat,
    meta: Any,
    name: str,
) -> UploadedModel:
    model_id = new_id(MODEL_ID_PREFIX)
    key = upload_key(tenant.id, "models", model_id, fmt)

    def record(session: Session, key: str) -> ModelRow:
        return model_store.add_model(
            session,
            model_id=model_id,
            tenant_id=tenant.id,
            name=name,
            format=fmt,
            path=key,
            size=upload.size,
            sha256=upload.sha256,
            meta=meta,
        )

    return save_upload(state, upload, key, record, model_view)


@router.get(
    "/models", name="list_models", summary="Built-in architectures", responses=problems(401)
)
def list_models(_tenant: CurrentTenant) -> ModelList:
    return ModelList(data=catalog())


@router.post(
    "/models",
    status_code=201,
    name="upload_model",
    summary="Upload your own model",
    description="Multipart upload of an `.onnx` model (your architecture with its starting "
    "weights, exported with the weights inside the file; use the answer's `uri` as "
    "`model.uri`) or of `.safetensors` starting weights for a built-in architecture (use it as "
    "`model.weights`). At most `LTH_MAX_MODEL_BYTES`. Validated before it is stored: an "
    "operator the engine cannot train is refused with its name.",
    openapi_extra=_UPLOAD_BODY,
    responses=problems(400, 401, 413, 415, 422),
)
async def upload_model(
    request: Request, response: Response, tenant: CurrentTenant, state: StateDep
) -> UploadedModel:
    settings = state.settings
    form = await receive_file(
        request,
        file_field="file",
        dest_dir=settings.model_root / tenant.id,
        max_file_bytes=settings.max_model_bytes,
    )
    upload = form.file
    if upload is None:
        raise _field_error("file", "attach the model as the multipart part `file`", "missing")
    try:
        fmt = _format_of(upload.filename)
        name = form.fields.get("name") or upload.filename
        if len(name) > 200:
            raise _field_error("name", "at most 200 characters", "too_long")
        try:
            info = await anyio.to_thread.run_sync(inspect_model, upload.path, fmt)
        except InvalidModelError as exc:
            raise _field_error("file", str(exc), exc.kind) from exc
        model = await anyio.to_thread.run_sync(
            _save, state, tenant, upload, fmt, info.as_metadata(), name
        )
    finally:
        upload.path.unlink(missing_ok=True)  # a no-op once renamed into place
    response.headers["Location"] = str(request.url_for("get_uploaded_model", model_id=model.id))
    return model


@router.get(
    "/models/uploads",
    name="list_uploaded_models",
    summary="Your uploaded models",
    responses=problems(401),
)
def list_uploaded_models(session: SessionDep, tenant: CurrentTenant) -> UploadedModelList:
    rows = model_store.list_models(session, tenant.id)
    return UploadedModelList(data=[model_view(r) for r in rows])


@router.get(
    "/models/uploads/{model_id}",
    name="get_uploaded_model",
    summary="One uploaded model",
    responses=problems(401, 404),
)
def get_uploaded_model(model_id: str, session: SessionDep, tenant: CurrentTenant) -> UploadedModel:
    row = model_store.get_model(session, tenant.id, model_id)
    if row is None:
        raise not_found("model")
    return model_view(row)


@router.delete(
    "/models/uploads/{model_id}",
    status_code=204,
    name="delete_uploaded_model",
    summary="Delete an uploaded model",
    description="Jobs already queued with it will fail when they start.",
    responses=problems(401, 404),
)
def delete_uploaded_model(
    model_id: str, session: SessionDep, tenant: CurrentTenant, state: StateDep
) -> Response:
    row = model_store.delete_model(session, tenant.id, model_id)
    if row is None:
        raise not_found("model")
    session.commit()
    remove_upload(state, row.path, f"model {model_id}")
    return Response(status_code=204)


@router.get(
    "/models/{name}", name="get_model", summary="One architecture", responses=problems(401, 404)
)
def get_model(name: str, _tenant: CurrentTenant) -> ModelInfo:
    for info in catalog():
        if info.name == name:
            return info
    raise ProblemError(404, f"No built-in architecture {name!r}.", kind="not-found")
