"""a center records whether a global administrator vouches for the machines it lists

Revision ID: 0009_center_setter
Revises: 0008_enrolment_key_minter
Create Date: 2026-12-06 23:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_center_setter"
down_revision = "0008_enrolment_key_minter"
# Adds a nullable column: older nodes run on it unchanged (they neither read nor write
# it). Every center from before reads as not vouched for (the weaker reading): a pool
# offered to a global administrator then takes its desktops by name or center only,
# until a global administrator vouches for the center.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("centers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vouched_by_global_admin", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("centers", schema=None) as batch_op:
        batch_op.drop_column("vouched_by_global_admin")
