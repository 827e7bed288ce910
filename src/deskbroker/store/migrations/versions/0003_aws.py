"""center_room: centers that refused a build for quota, for pools spanning centers

Revision ID: 0003_aws
Revises: 0002_backup
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_aws"
down_revision = "0002_backup"
# Adds a table: older nodes run on it unchanged.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "center_room",
        sa.Column("center_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("full_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["center_id"],
            ["centers.id"],
            name=op.f("fk_center_room_center_id_centers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_center_room_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("center_id", name=op.f("pk_center_room")),
    )
    with op.batch_alter_table("center_room", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_center_room_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("center_room", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_center_room_tenant_id"))
    op.drop_table("center_room")
