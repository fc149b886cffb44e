"""Reusable trainings (shared dense runs and round prefixes), worker slots, new event types.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_OLD_TYPES = "type IN ('state', 'progress', 'round', 'warning', 'message')"
_NEW_TYPES = "type IN ('state', 'progress', 'round', 'warning', 'message', 'reuse', 'execution')"


def upgrade() -> None:
    op.create_table(
        "reusable_trainings",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column(
            "files",
            sa.JSON().with_variant(JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_reusable_trainings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_reusable_trainings_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_reusable_trainings")),
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint(op.f("ck_events_type"), type_="check")
        batch.create_check_constraint("type", _NEW_TYPES)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint(op.f("ck_events_type"), type_="check")
        batch.create_check_constraint("type", _OLD_TYPES)
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("concurrency")
    op.drop_table("reusable_trainings")
