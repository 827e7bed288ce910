"""Waiting users served from free desktops, after a release or a change to pools.

Its own module because both the desktop use cases (a release) and the inventory (a scan,
an admin's edit) serve queues, and neither may import the other.

A refresh recomputes every pool of a tenant, so a unit that writes many pools (a
configuration document's apply) batches them (``pool_writes_batched``): one refresh
when the batch ends, in the same unit, instead of one per pool. Anything that reads the
membership of a unit with a batch open settles it first (``settle``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    pending = _pending(session)
    if pending is not None:
        # The tenant's every pool is recomputed here: a batch owes it nothing more.
        pending.discard(tenant_id)
    membership.refresh(session, tenant_id)
    serve_queues(session, tenant_id)


# The tenants whose refresh the unit's open batch of pool writes owes (``session.info``,
# so it ends with the unit).
_PENDING = "deskbroker.pools_to_refresh"


def _pending(session: Session) -> set[str] | None:
    found = session.info.get(_PENDING)
    return found if isinstance(found, set) else None


@contextmanager
def pool_writes_batched(session: Session) -> Iterator[None]:
    """Pool writes made inside (``refresh_after_pool_write``) refresh their tenant's
    pools once, as the block ends, still in the unit: nothing commits, or is read, with
    stale membership. For a unit that writes many pools, where a refresh per pool (each
    recomputing every pool of the tenant) made the unit quadratic in its pools. Nested
    blocks are one batch; an error leaves nothing to refresh (the unit rolls back)."""
    if _pending(session) is not None:
        yield
        return
    session.info[_PENDING] = set()
    try:
        yield
        settle(session)
    finally:
        session.info.pop(_PENDING, None)


def refresh_after_pool_write(session: Session, tenant_id: str) -> None:
    """After a pool is created or changed: ``refresh_pools`` now, or when the unit's
    open batch ends (``pool_writes_batched``)."""
    pending = _pending(session)
    if pending is None:
        refresh_pools(session, tenant_id)
    else:
        pending.add(tenant_id)


def settle(session: Session) -> None:
    """Refresh now what the unit's open batch of pool writes owes: before anything in the
    unit reads the membership (a stronger-account check, the guard, a claim). Nothing
    when no batch is open or it owes nothing."""
    pending = _pending(session)
    while pending:
        refresh_pools(session, min(pending))


def keep_guard(session: Session, tenant_id: str) -> None:
    """After a rule, policy or user changes who is offered which pool: a pool now offered
    to a global administrator lets go at once of the desktops its guard keeps out
    (``PoolDefinition.guarded``), not at the next scan; and brokers that refresh the
    tenant's pools meanwhile look again (``membership.guard_changed``)."""
    membership.guard_changed(session, tenant_id)
    # ``breached`` reads the members: not those of before a batch's pool writes.
    settle(session)
    if membership.breached(session, tenant_id):
        refresh_pools(session, tenant_id)
