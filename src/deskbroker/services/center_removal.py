"""An administrator's delete of a center, plain or forced.

A plain delete is refused (409) while desktops of the center are being removed: their
rows are all that tells the center's ``remove_desktops`` job which machines to
terminate. A center whose cloud is gone for good never lets them go, so a forced delete
drops those rows with the center and records, in the tenant's event log
(``center.machines_abandoned``), each machine the broker stops tracking, for an operator
to clean up by hand. It calls no cloud: the machines may still exist. Everything else a
plain delete refuses (assigned desktops, pools that use the center, a pool that serves
a stronger account) is refused all the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from deskbroker.security import TokenClaims
from deskbroker.services import inventory_catalog, standing, write_context
from deskbroker.services.catalog_crud import Catalog, Resource, audit_event
from deskbroker.services.context import BrokerContext
from deskbroker.store import removals
from deskbroker.store.db import Unit
from deskbroker.store.tables import Center

ABANDONED_KIND = "center.machines_abandoned"
# The most machines one event lists by name: the event log's rows stay small whatever
# the center held; ``count`` says how many there were in all.
MAX_LISTED = 200


def _drop_removals(session: Unit, center: Center) -> None:
    # Locked first, before anything else of the center is touched: a removal pass that
    # confirms one of them meanwhile either commits before (the row is no longer listed)
    # or finds it gone after (and writes nothing).
    abandoned = removals.lock_requested(session, center.id)
    inventory_catalog.clear_for_delete(session, center)
    if abandoned:
        record_abandoned(session, write_context.actor_of(session).actor, center, abandoned)


def record_abandoned(
    session: Unit, who: TokenClaims, center: Center, abandoned: list[tuple[str, str, str]]
) -> None:
    """The event that names the machines a forced delete of ``center`` stopped
    tracking: ``abandoned`` is (desktop id, desktop name, external id), each row."""
    listed = sorted(abandoned, key=lambda row: (row[1], row[0]))[:MAX_LISTED]
    audit_event(
        session,
        who,
        ABANDONED_KIND,
        tenant_id=center.tenant_id,
        detail={
            "center_id": center.id,
            "center": center.name,
            "center_kind": center.kind,
            "count": len(abandoned),
            "machines": [
                {"desktop_id": desktop_id, "name": name, "external_id": external_id}
                for desktop_id, name, external_id in listed
            ],
        },
    )


_PLAIN: Catalog[Any] = Catalog(inventory_catalog.CENTERS, "centers", standing.check_reach)
_FORCED_CENTERS: Resource[Center] = replace(inventory_catalog.CENTERS, before_delete=_drop_removals)
_FORCED: Catalog[Any] = Catalog(_FORCED_CENTERS, "centers", standing.check_reach)


def delete_center(ctx: BrokerContext, who: TokenClaims, center_id: str, *, force: bool) -> None:
    """Delete ``center_id`` as the module says; ``force`` drops the desktops being
    removed with it. Not the principal's tenant's: NotFound, as for any object."""
    (_FORCED if force else _PLAIN).delete(ctx, who, center_id)


__all__ = ["ABANDONED_KIND", "MAX_LISTED", "delete_center", "record_abandoned"]
