"""a leaner event log: no index on an event's kind

Revision ID: 0006_lean_events
Revises: 0005_rollout
Create Date: 2026-12-05 20:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0006_lean_events"
down_revision = "0005_rollout"
# Drops an index no query needs for correctness: older nodes run on it unchanged (their
# listings by kind scan the tenant's index instead).
phase = "expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every login and logout writes four events; their kind index was 16 bytes of each,
    # for a filter that always comes with a tenant (its own index) or an id range.
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_kind"))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_kind"), ["kind"], unique=False)
