"""day-two operations: drain (centers, pools, desktops), delete from disk, forgotten desktops

Revision ID: 0002_backup
Revises: 0001
Create Date: 2026-12-05 12:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_backup"
down_revision = "0001"
# Adds a table and nullable columns: older nodes run on it unchanged.
phase = "expand"
branch_labels = None
depends_on = None

_DRAINED = ("centers", "pools", "desktops")


def upgrade() -> None:
    for table in _DRAINED:
        op.add_column(table, sa.Column("drained_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "desktops", sa.Column("delete_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "forgotten_desktops",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("center_id", sa.String(length=32), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["center_id"],
            ["centers.id"],
            name=op.f("fk_forgotten_desktops_center_id_centers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_forgotten_desktops_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forgotten_desktops")),
        sa.UniqueConstraint(
            "center_id", "external_id", name=op.f("uq_forgotten_desktops_center_id")
        ),
    )
    op.create_index(
        op.f("ix_forgotten_desktops_center_id"), "forgotten_desktops", ["center_id"], unique=False
    )
    op.create_index(
        op.f("ix_forgotten_desktops_tenant_id"), "forgotten_desktops", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_forgotten_desktops_tenant_id"), table_name="forgotten_desktops")
    op.drop_index(op.f("ix_forgotten_desktops_center_id"), table_name="forgotten_desktops")
    op.drop_table("forgotten_desktops")
    with op.batch_alter_table("desktops") as batch:
        batch.drop_column("delete_requested_at")
    for table in _DRAINED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("drained_at")
