"""Waiting users served from free desktops, after a release or a change to pools.

Its own module because both the desktop use cases (a release) and the inventory (a scan,
an admin's edit) serve queues, and neither may import the other.
"""

from __future__ import annotations

from deskbroker.domain.offers import OfferOrdering
from deskbroker.store import claims, events, membership, queue_rows
from deskbroker.store.db import Unit as Session


def serve_queues(session: Session, tenant_id: str) -> int:
    """Give free desktops to waiting users, oldest ticket first; returns how many."""
    served = 0
    for pool_id in queue_rows.pools_with_queue(session, tenant_id):
        while True:
            head = queue_rows.next_in_queue(session, pool_id)
            if head is None:
                break
            entry_id, user_id = head.entry_id, head.user_id
            got = claims.claim(
                session,
                tenant_id=tenant_id,
                pool_id=pool_id,
                user_id=user_id,
                kind=head.assignment,
                ordering=OfferOrdering(head.ordering),
                skip_lost=head.skip_lost,
            )
            if got is None:
                break
            queue_rows.serve_entry(session, entry_id, pool_id)
            events.append(
                session,
                "assign",
                tenant_id=tenant_id,
                actor="queue",
                user_id=user_id,
                desktop_id=got.id,
                pool_id=pool_id,
                detail={"reason": "queue"},
            )
            served += 1
    return served


def refresh_pools(session: Session, tenant_id: str) -> None:
    """After desktops or pools change: fix membership, then serve waiting users."""
    membership.refresh(session, tenant_id)
    serve_queues(session, tenant_id)


def keep_guard(session: Session, tenant_id: str) -> None:
    """After a rule, policy or user changes who is offered which pool: a pool now offered
    to a global administrator lets go at once of the desktops its guard keeps out
    (``PoolDefinition.guarded``), not at the next scan; and brokers that refresh the
    tenant's pools meanwhile look again (``membership.guard_changed``)."""
    membership.guard_changed(session, tenant_id)
    if membership.breached(session, tenant_id):
        refresh_pools(session, tenant_id)
