"""a pending enrolment remembers the role of the administrator who approved it

Revision ID: 0011_enrolment_approver
Revises: 0010_webhook_setter
Create Date: 2026-12-07 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_enrolment_approver"
down_revision = "0010_webhook_setter"
# Adds a nullable column: older nodes run on it unchanged (they never set it, and an
# approval without it stands for a tenant administrator's, the weaker reading).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending_enrolments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decided_by_role", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pending_enrolments", schema=None) as batch_op:
        batch_op.drop_column("decided_by_role")
