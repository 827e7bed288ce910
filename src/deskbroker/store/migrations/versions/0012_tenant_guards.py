"""each tenant's pool-guard version, in a table of its own, so brokers see each other's

Revision ID: 0012_tenant_guards
Revises: 0011_enrolment_approver
Create Date: 2026-12-07 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_tenant_guards"
down_revision = "0011_enrolment_approver"
# A new table: older nodes run on it unchanged (they neither raise nor read it; their
# refreshes are not looked at again, as before).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_guards",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_guards_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_guards")),
    )


def downgrade() -> None:
    op.drop_table("tenant_guards")
