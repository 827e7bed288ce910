"""two indexes on webhook deliveries: each webhook's due ones, and the leased ones

Revision ID: 0013_delivery_indexes
Revises: 0012_tenant_guards
Create Date: 2026-12-07 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0013_delivery_indexes"
down_revision = "0012_tenant_guards"
# Indexes only: older nodes run on them unchanged.
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_hook_due",
        "webhook_deliveries",
        ["webhook_id", "state", "next_attempt_at", "event_id"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_deliveries_lease", "webhook_deliveries", ["lease_expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_lease", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_hook_due", table_name="webhook_deliveries")
