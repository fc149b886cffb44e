"""Uploaded datasets: rows pointing at validated files under ``<home>/datasets/<tenant>/``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api_schemas.jobs import DatasetFormat
from store.ids import looks_like_id
from store.tables import DatasetRow, utcnow

DATASET_SCHEME = "dataset"


def dataset_uri(dataset_id: str) -> str:
    """The spec URI naming an uploaded dataset."""
    return f"{DATASET_SCHEME}://{dataset_id}"


def dataset_id_from_uri(uri: str) -> str | None:
    """The id in ``dataset://<id>``; None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme != DATASET_SCHEME:
        return None
    return parts.netloc or parts.path.strip("/") or None


def add_dataset(
    session: Session,
    *,
    dataset_id: str,
    tenant_id: str,
    name: str,
    format: DatasetFormat,
    path: str,
    size: int,
    sha256: str,
    meta: Mapping[str, Any],
    now: datetime | None = None,
) -> DatasetRow:
    """Record a dataset whose file is already in place."""
    row = DatasetRow(
        id=dataset_id,
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


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> DatasetRow | None:
    """The tenant's dataset; None when missing or another tenant's, and without a query for text
    that is no dataset id at all."""
    if not looks_like_id(dataset_id, "ds"):
        return None
    return session.scalars(
        sa.select(DatasetRow).where(DatasetRow.id == dataset_id, DatasetRow.tenant_id == tenant_id)
    ).one_or_none()


def list_datasets(session: Session, tenant_id: str, *, limit: int = 1000) -> list[DatasetRow]:
    """The tenant's datasets, newest first."""
    query = (
        sa.select(DatasetRow)
        .where(DatasetRow.tenant_id == tenant_id)
        .order_by(DatasetRow.created_at.desc(), DatasetRow.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> DatasetRow | None:
    """Delete the row and return it (the caller removes the file); None if not the tenant's."""
    row = get_dataset(session, tenant_id, dataset_id)
    if row is not None:
        session.delete(row)
        session.flush()
    return row
