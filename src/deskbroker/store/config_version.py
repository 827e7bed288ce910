"""The configuration version every node's cache is checked against, moved by the writes
that can change a login's outcome.

A write unit records which tenants' configuration it changed (``bump_config_version``);
the version's one row is moved once, when the unit commits. The row is locked from that
moment until the commit ends, so versions still commit in order (a cache that sees
version V sees every change up to V), but the lock is held for the commit's
milliseconds, not for the unit's length: a tenant's configuration apply of a thousand
pools used to hold the row, and with it every other tenant's administrators' writes,
for all of its seconds. The holder of the row waits for nothing else once it has it,
so the row takes no part in any deadlock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.event import listens_for
from sqlalchemy.orm import Session, SessionTransaction

from deskbroker.store.tables import BrokerState, ConfigChange

# Changes kept for caches catching up; a cache further behind than this reloads whole.
KEPT_CHANGES = 5000

# session.info key: the tenants the open unit changed (``None`` among them: every one).
_CHANGED = "deskbroker.config_changed"


def bump_config_version(session: Session, tenant_id: str | None) -> None:
    """Records that this unit changed ``tenant_id``'s configuration (``None``: possibly
    every tenant's); the version moves when the unit commits, and the caches then
    reload that tenant's rows only. A unit rolled back moves nothing."""
    session.info.setdefault(_CHANGED, set()).add(tenant_id)


@listens_for(Session, "before_commit")
def _move_version(session: Session) -> None:
    # A savepoint's release is a commit too: the unit's own commit moves the version.
    if session.in_nested_transaction():
        return
    changed: set[str | None] | None = session.info.pop(_CHANGED, None)
    if changed:
        # The unit's own rows first: a row lock its last writes wait for must not be
        # waited for while this unit holds the version's row.
        session.flush()
        _record(session, changed)


@listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CHANGED, None)


def _record(session: Session, changed: set[str | None]) -> None:
    """One version per changed tenant (the change record's key is the version), or one
    for every tenant when the unit changed something of all of them."""
    tenants: list[Any] = [None] if None in changed else sorted(t for t in changed if t)
    last = session.execute(
        update(BrokerState)
        .where(BrokerState.id == 1)
        .values(config_version=BrokerState.config_version + len(tenants))
        .returning(BrokerState.config_version)
    ).scalar_one()
    first = last - len(tenants) + 1
    session.execute(
        insert(ConfigChange),
        [{"version": first + i, "tenant_id": tenant} for i, tenant in enumerate(tenants)],
    )
    if last // 500 != (first - 1) // 500:  # now and then, not on every write
        session.execute(delete(ConfigChange).where(ConfigChange.version <= last - KEPT_CHANGES))
