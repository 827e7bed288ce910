"""a terminate timer remembers that it took its desktop out of the claim

Revision ID: 0007_timer_took_out
Revises: 0006_lean_events
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_timer_took_out"
down_revision = "0006_lean_events"
# Adds a nullable column: older nodes run on it unchanged (they never set it, so a
# desktop they take out is recovered as before, which is to say not at all).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("took_out_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("timers", schema=None) as batch_op:
        batch_op.drop_column("took_out_at")
