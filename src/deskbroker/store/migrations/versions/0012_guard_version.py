"""a tenant counts the changes of its pools' guard, so brokers see each other's

Revision ID: 0012_guard_version
Revises: 0011_enrolment_approver
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_guard_version"
down_revision = "0011_enrolment_approver"
# Adds a column with a default: older nodes run on it unchanged (they neither raise nor
# read it; their refreshes are not looked at again, as before).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("guard_version", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("guard_version")
