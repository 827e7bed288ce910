"""What the pool routes need of the store beyond their own tables: how many of a pool's
desktops a login could be given (the claim's definition), and cancelling the builds a
deleted pool leaves unstarted."""

from __future__ import annotations

from deskbroker.store import cancellations, claims
from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import utcnow


def free_count(session: Session, pool_id: str) -> int:
    """The pool's free desktops: what the login claim could take now."""
    return claims.free_desktops(session, [pool_id])[pool_id]


def cancel_builds_of_deleted(session: Session, *, pool_id: str, tenant_id: str, name: str) -> int:
    """Cancel the deleted pool's builds that have not reached the cloud (in the delete's
    own unit: no task outlives its pool without being told); returns how many."""
    cancelled = cancellations.cancel_unstarted(
        session,
        pool_id=pool_id,
        tenant_id=tenant_id,
        limit=None,
        reason=f"pool {name} was deleted",
        now=utcnow(),
    )
    return len(cancelled)
