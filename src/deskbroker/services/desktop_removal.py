"""An administrator's delete of a desktop: removed from disk, or forgotten.

A desktop the broker may destroy (``deletable``: what the engine builds, unless its
pool says otherwise) on a center that can terminate machines is marked ``deleting`` and
handed to the engine's ``remove_desktops`` job of its center, which terminates the
instance with no transaction open and drops the row once the center confirms it is
gone. Any other desktop (found by a scan: the broker did not build it) is forgotten:
its row goes and its center's scans leave the machine out until an administrator
un-forgets it; the machine itself is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from deskbroker.centers import registry
from deskbroker.centers.base import Capability
from deskbroker.domain.states import PowerState
from deskbroker.errors import Conflict, DeskbrokerError, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services import standing, write_context
from deskbroker.services.catalog_crud import audit_event
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_pools
from deskbroker.store import desktop_rows, jobs, membership, removals
from deskbroker.store.db import Unit
from deskbroker.store.jobs import JobKind
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Desktop, ForgottenDesktop, utcnow

_DESKTOPS = Repository(Desktop, "desktop")
_FORGOTTEN = Repository(ForgottenDesktop, "forgotten desktop")


@dataclass(frozen=True)
class Removal:
    """What a delete did: ``deleting`` (the engine terminates the instance) or
    ``forgotten`` / ``removed`` (the row is gone now)."""

    desktop_id: str
    name: str
    outcome: Literal["deleting", "forgotten", "removed"]
    words: str


def _can_terminate(center: Center) -> bool:
    try:
        return Capability.TERMINATE in registry.driver_class(center.kind).capabilities
    except DeskbrokerError:
        return False


def delete_desktop(
    ctx: BrokerContext, who: TokenClaims, desktop_id: str, tenant_scope: str | None
) -> Removal:
    """Delete ``desktop_id`` as described above; refused (409) while it is assigned or
    still being built, and (403) when it reaches an account stronger than the actor
    (``standing.check_reach``). ``tenant_scope`` None: a global administrator."""
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        desktop = _DESKTOPS.get(session, desktop_id, tenant_scope)
        # The delete refreshes the tenant's pools: held before the row is locked.
        membership.hold(session, desktop.tenant_id)
        # Locked (within the caller's tenant: another tenant's desktop is not found above)
        # before it is judged: a claim (or a queue's serving) that committed between a
        # plain read and the writes below would have its user's desktop marked for
        # deletion (its instance terminated) or forgotten. A claim skips a locked row.
        locked = desktop_rows.lock(session, desktop.id)
        if locked is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        desktop = locked
        # The stronger-account rule, as for a change or a drain: a free desktop of a pool
        # that serves a stronger account is one that account would be handed.
        standing.check_reach(session, desktop, "desktop", "delete")
        if desktop.assigned_user_id is not None:
            raise Conflict(f"desktop {desktop.name} is assigned; release it first")
        power = PowerState(desktop.power_state)
        if power is PowerState.BUILDING:
            raise Conflict(
                f"desktop {desktop.name} is being built; delete it once it is built "
                "(or lower its pool's targets)"
            )
        if desktop.delete_requested_at is not None or power is PowerState.DELETING:
            return Removal(
                desktop.id, desktop.name, "deleting", f"desktop {desktop.name} is being deleted"
            )
        center = session.get(Center, desktop.center_id)
        assert center is not None  # a desktop's center is a foreign key (RESTRICT)
        if power is PowerState.DELETED:
            outcome: Literal["deleting", "forgotten", "removed"] = "removed"
        elif desktop.deletable and _can_terminate(center):
            outcome = "deleting"
        else:
            outcome = "forgotten"
        audit_event(
            session,
            who,
            "admin.delete",
            tenant_id=desktop.tenant_id,
            desktop_id=desktop.id,
            detail={
                "resource": "desktops",
                "id": desktop.id,
                "name": desktop.name,
                "outcome": outcome,
                "center": center.name,
                "external_id": desktop.external_id,
            },
        )
        if outcome == "deleting":
            _mark_deleting(session, desktop)
            return Removal(
                desktop.id,
                desktop.name,
                "deleting",
                f"desktop {desktop.name} is being deleted: its instance on center "
                f"{center.name} is terminated by the engine, and the desktop is gone once "
                "the center confirms",
            )
        if outcome == "forgotten":
            _forget(session, who, desktop)
        tenant = desktop.tenant_id
        session.delete(desktop)
        session.flush()
        refresh_pools(session, tenant)
        words = (
            f"desktop {desktop.name} is forgotten: the broker did not build it, so its machine "
            f"on center {center.name} is left alone and later scans leave it out"
            if outcome == "forgotten"
            else f"desktop {desktop.name} was already gone from its center and is removed"
        )
        return Removal(desktop.id, desktop.name, outcome, words)


def _mark_deleting(session: Unit, desktop: Desktop) -> None:
    desktop_rows.take_out(desktop, PowerState(desktop.power_state), PowerState.DELETING)
    desktop.delete_requested_at = utcnow()
    jobs.poke(session, JobKind.REMOVE_DESKTOPS, desktop.center_id)


def _forget(session: Unit, who: TokenClaims, desktop: Desktop) -> None:
    if desktop.external_id in removals.forgotten_ids(session, desktop.center_id):
        return
    session.add(
        ForgottenDesktop(
            tenant_id=desktop.tenant_id,
            center_id=desktop.center_id,
            external_id=desktop.external_id,
            name=desktop.name,
            actor=who.username,
        )
    )


@dataclass(frozen=True)
class Forgotten:
    id: str
    tenant_id: str
    center_id: str
    external_id: str
    name: str
    actor: str
    forgotten_at: datetime


def _forgotten(row: ForgottenDesktop) -> Forgotten:
    return Forgotten(
        row.id,
        row.tenant_id,
        row.center_id,
        row.external_id,
        row.name,
        row.actor,
        row.forgotten_at,
    )


def list_forgotten(
    ctx: BrokerContext,
    tenant_scope: str | None,
    *,
    center_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Forgotten], int]:
    """The machines scans leave out, optionally of one center, in a stable order."""
    filters = {"center_id": center_id} if center_id else {}
    with ctx.db.read() as session:
        rows, total = _FORGOTTEN.list(session, tenant_scope, filters, limit, offset)
        return [_forgotten(r) for r in rows], total


def unforget(
    ctx: BrokerContext, who: TokenClaims, forgotten_id: str, tenant_scope: str | None
) -> Forgotten:
    """Let scans import the machine again: its center's next scan is a full one, now.
    Refused (403) when its center reaches an account stronger than the actor."""
    with ctx.db.write() as session:
        write_context.attach_actor(session, ctx, who)
        row = _FORGOTTEN.get(session, forgotten_id, tenant_scope)
        found = _forgotten(row)
        center = session.get(Center, row.center_id)
        if center is not None:
            # The machine comes back as a desktop of its center, so into every pool that
            # takes the center's desktops: adding it is a change of the center's.
            standing.check_reach(session, center, "center", "un-forget a machine of")
            # An incremental scan lists only what changed: the machine did not.
            center.last_full_scan_at = None
            jobs.poke(session, JobKind.SCAN_CENTER, center.id)
        audit_event(
            session,
            who,
            "admin.unforget",
            tenant_id=row.tenant_id,
            detail={"center_id": row.center_id, "external_id": row.external_id, "name": row.name},
        )
        session.delete(row)
        return found


__all__ = ["Forgotten", "Removal", "delete_desktop", "list_forgotten", "unforget"]
