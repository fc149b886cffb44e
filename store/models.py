"""Uploaded models: rows pointing at validated files under ``<home>/models/<tenant>/``.

A job names one as ``model://<id>``: an ONNX upload in ``model.uri``, a safetensors upload in
``model.weights``. Lookups are per tenant, so another tenant's id names nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api_schemas.jobs import ModelFormat
from api_schemas.spec import MODEL_SCHEME
from store.ids import looks_like_id
from store.tables import ModelRow, utcnow

MODEL_ID_PREFIX = "mdl"


def model_uri(model_id: str) -> str:
    """The spec URI naming an uploaded model."""
    return f"{MODEL_SCHEME}://{model_id}"


def model_id_from_uri(uri: str) -> str | None:
    """The id in ``model://<id>``; None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme != MODEL_SCHEME:
        return None
    return parts.netloc or parts.path.strip("/") or None


def add_model(
    session: Session,
    *,
    model_id: str,
    tenant_id: str,
    name: str,
    format: ModelFormat,
    path: str,
    size: int,
    sha256: str,
    meta: Mapping[str, Any],
    now: datetime | None = None,
) -> ModelRow:
    """Record a model whose file is already in place."""
    row = ModelRow(
        id=model_id,
        tenant_id=tenant_id,
        name=name,
        format=format,
        path=path,
        size=size,
        sha256=sha256,
        meta=dict(meta),
        created_at=now or utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, tenant_id: str, model_id: str) -> ModelRow | None:
    """The tenant's model; None when missing, another tenant's, or no model id at all."""
    if not looks_like_id(model_id, MODEL_ID_PREFIX):
        return None
    return session.scalars(
        sa.select(ModelRow).where(ModelRow.id == model_id, ModelRow.tenant_id == tenant_id)
    ).one_or_none()


def get_model_by_uri(session: Session, tenant_id: str, uri: str) -> ModelRow | None:
    """The tenant's model behind ``model://<id>``, else None."""
    model_id = model_id_from_uri(uri)
    return get_model(session, tenant_id, model_id) if model_id else None


def list_models(session: Session, tenant_id: str, *, limit: int = 1000) -> list[ModelRow]:
    """The tenant's models, newest first."""
    query = (
        sa.select(ModelRow)
        .where(ModelRow.tenant_id == tenant_id)
        .order_by(ModelRow.created_at.desc(), ModelRow.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def delete_model(session: Session, tenant_id: str, model_id: str) -> ModelRow | None:
    """Delete the row and return it (the caller removes the file); None if not the tenant's."""
    row = get_model(session, tenant_id, model_id)
    if row is not None:
        session.delete(row)
        session.flush()
    return row
