"""golden images rolled out: pool rollouts, desktop rebuilds, pool upkeep

Revision ID: 0005_rollout
Revises: 0004_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_rollout"
down_revision = "0004_events"
# Adds tables: older nodes run on it unchanged.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_rollouts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("center_id", sa.String(length=32), nullable=False),
        sa.Column("image", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("previous_image", sa.String(length=255), nullable=False),
        sa.Column("previous_image_id", sa.String(length=255), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), nullable=False),
        sa.Column("include_persistent", sa.Boolean(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("started_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('rolling', 'paused', 'done')", name=op.f("ck_pool_rollouts_state")
        ),
        sa.ForeignKeyConstraint(
            ["center_id"],
            ["centers.id"],
            name=op.f("fk_pool_rollouts_center_id_centers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["pools.id"],
            name=op.f("fk_pool_rollouts_pool_id_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pool_rollouts_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_rollouts")),
    )
    with op.batch_alter_table("pool_rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pool_rollouts_pool_id"), ["pool_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_pool_rollouts_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "desktop_rebuilds",
        sa.Column("desktop_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("image_id", sa.String(length=255), nullable=False),
        sa.Column("started", sa.Boolean(), nullable=False),
        sa.Column("was_available", sa.Boolean(), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["desktop_id"],
            ["desktops.id"],
            name=op.f("fk_desktop_rebuilds_desktop_id_desktops"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["pools.id"],
            name=op.f("fk_desktop_rebuilds_pool_id_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_desktop_rebuilds_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("desktop_id", name=op.f("pk_desktop_rebuilds")),
    )
    with op.batch_alter_table("desktop_rebuilds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_desktop_rebuilds_pool_id"), ["pool_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_desktop_rebuilds_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "pool_upkeep",
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("refresh_on_release", sa.Boolean(), nullable=False),
        sa.Column("scheduled_action", sa.String(length=20), nullable=False),
        sa.Column("scheduled_at", sa.String(length=5), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("last_scheduled_on", sa.String(length=10), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["pools.id"],
            name=op.f("fk_pool_upkeep_pool_id_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pool_upkeep_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("pool_id", name=op.f("pk_pool_upkeep")),
    )
    with op.batch_alter_table("pool_upkeep", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pool_upkeep_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pool_upkeep", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pool_upkeep_tenant_id"))
    op.drop_table("pool_upkeep")
    with op.batch_alter_table("desktop_rebuilds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_desktop_rebuilds_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_desktop_rebuilds_pool_id"))
    op.drop_table("desktop_rebuilds")
    with op.batch_alter_table("pool_rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pool_rollouts_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_pool_rollouts_pool_id"))
    op.drop_table("pool_rollouts")
