"""which tenant each configuration version changed, so caches reload only that tenant

Revision ID: 0014_config_changes
Revises: 0013_delivery_indexes
Create Date: 2026-12-07 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_config_changes"
down_revision = "0013_delivery_indexes"
# A new table: an older node bumps the version without a row here, which a newer node's
# cache reads as "any tenant may have changed" and reloads everything, as before.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_changes",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_config_changes")),
    )


def downgrade() -> None:
    op.drop_table("config_changes")
