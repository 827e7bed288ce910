"""Bulk writes of a center scan: only the rows that changed, in a few statements."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.scans import next_power
from deskbroker.domain.states import (
    AVAILABILITY_TRANSITIONS,
    POWER_TRANSITIONS,
    AgentState,
    Availability,
    PowerState,
    agent_after_power,
    from_any,
)
from deskbroker.store import removals
from deskbroker.store.tables import Desktop, ProvisioningTask, new_id, utcnow
from deskbroker.store.tasks import OPEN_STATES

PENDING_PREFIX = "task:"
# How far apart two brokers' clocks may be: a build another node recorded this much
# before a listing began may still have reached the cloud after it.
CLOCK_SKEW = timedelta(seconds=2)
_FIELDS = (
    "name",
    "address",
    "hostname",
    "os",
    "attributes",
    "power_state",
    "agent_state",
    "driver_state",
)


@dataclass(frozen=True)
class SeenMachine:
    """One machine as a scan saw it: the store's copy of what the center's driver
    reported (the store does not read the driver seam's types)."""

    external_id: str
    name: str
    address: str = ""
    hostname: str = ""
    os: str = ""
    power_state: PowerState = PowerState.UNKNOWN
    attributes: Mapping[str, Any] = field(default_factory=dict)
    driver_state: Mapping[str, Any] = field(default_factory=dict)
    # The desktop it was built for (empty for a machine the broker did not build).
    desktop_id: str = ""
    # The center vouches that the machine exists but not what it is (a cloud cell that
    # did not answer): it counts as seen and changes nothing.
    partial: bool = False


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    # New machines not imported because the tenant's desktop quota had no room.
    left_out: list[str] = field(default_factory=list)
    # Machines not seen but kept until a second full listing agrees (names, and the
    # external ids the next full scan must miss too before they go).
    held: list[str] = field(default_factory=list)
    held_ids: list[str] = field(default_factory=list)
    # Machines the center vouched for only in part (external ids): kept as they were.
    partial: list[str] = field(default_factory=list)
    known: int = 0
    # Machines the center has that an administrator told the broker to forget.
    forgotten: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _values(machine: SeenMachine, current_power: str, current_agent: str) -> dict[str, Any]:
    power = next_power(current_power, machine.power_state)
    return {
        "name": machine.name,
        "address": machine.address,
        "hostname": machine.hostname,
        "os": machine.os,
        "attributes": dict(machine.attributes),
        "power_state": power,
        "agent_state": agent_after_power(current_agent, PowerState(power)).value,
        "driver_state": dict(machine.driver_state),
    }


def _as_read(row: Any) -> dict[str, Any]:
    """The columns an update of ``row`` checks are still as this scan read them."""
    return {"w_power": row.power_state, "w_agent": row.agent_state}


def _kept_by_others(updates: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The scan's updates grouped by the columns they write. A desktop's power state that
    is the provisioner's (a build not handed over) or a removal's (``deleting``) is left
    out of its update, not written back as read: on PostgreSQL the hand-over may commit
    between the scan's read and its write, and a ``building`` written back over the
    handed-over desktop kept it out of the claim until a full scan."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for values in updates:
        groups.setdefault(tuple(values), []).append(values)
    return list(groups.values())


def _being_built(session: Session, center_id: str) -> set[str]:
    """The center's desktops still ``building`` with a provisioning task open: their
    power state is the provisioner's until it hands them over."""
    return {
        str(desktop_id)
        for desktop_id in session.scalars(
            select(ProvisioningTask.desktop_id).where(
                ProvisioningTask.state.in_(OPEN_STATES),
                ProvisioningTask.desktop_id.in_(
                    select(Desktop.id).where(
                        Desktop.center_id == center_id,
                        Desktop.power_state == PowerState.BUILDING.value,
                    )
                ),
            )
        ).all()
    }


def sync(
    session: Session,
    *,
    tenant_id: str,
    center_id: str,
    machines: Sequence[SeenMachine],
    gone: Iterable[str] = (),
    complete: bool,
    room: int | None = None,
    hold: bool = False,
    held_before: Collection[str] = (),
    listed_at: datetime | None = None,
) -> SyncResult:
    """Write what a scan saw. ``complete`` means ``machines`` is everything the center
    has, so anything else is gone; otherwise only ``gone`` ids are removed. At most
    ``room`` new desktops are added (the tenant's quota); the rest are ``left_out``.
    ``hold`` says a complete listing's silence is one look only: of its unseen desktops
    only those in ``held_before`` (what the previous full listing missed) are removed;
    the rest are kept (``held``, ``held_ids``).

    A ``partial`` machine is seen (never removed nor held) but writes nothing: neither
    its known desktop's fields nor, for a machine the broker does not know, a new one.

    ``listed_at``: when the complete listing was asked for. A desktop whose build moved
    since then may have reached the cloud after the listing was taken, so the listing's
    silence about it says nothing; the next full scan judges it."""
    result = SyncResult()
    gone = set(gone)
    query = select(
        Desktop.id,
        Desktop.external_id,
        Desktop.assigned_user_id,
        *(getattr(Desktop, f) for f in _FIELDS),
    ).where(Desktop.center_id == center_id)
    if not complete:
        if not machines and not gone:
            return result
        # An incremental scan reads only the rows it may touch.
        wanted = gone | {m.external_id for m in machines}
        query = query.where(
            Desktop.external_id.in_(wanted) | Desktop.external_id.startswith(PENDING_PREFIX)
        )
    rows = session.execute(query).all()
    existing = {r.external_id: r for r in rows}
    # Rows of desktops still being provisioned, by desktop id: a scan that meets their
    # instance before the provisioner recorded it adopts it instead of adding a twin.
    pending = {r.id: r for r in rows if r.external_id.startswith(PENDING_PREFIX)}
    being_built = _being_built(session, center_id)
    # Machines an administrator deleted: forgotten ones are not imported again, and the
    # ones being deleted stay ``deleting`` until the removal job sees them gone.
    forgotten = removals.forgotten_ids(session, center_id)
    deleting = removals.delete_requested_ids(session, center_id)
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    seen: set[str] = set()
    for machine in machines:
        if machine.external_id in forgotten:
            result.forgotten += 1
            continue
        seen.add(machine.external_id)
        row = existing.get(machine.external_id)
        if machine.partial:
            # No news but that it exists: what the broker knew stands, and a machine it
            # does not know waits for a whole record before it becomes a desktop.
            result.partial.append(machine.external_id)
            continue
        if row is None:
            owner = pending.pop(machine.desktop_id, None)
            if owner is not None:
                # Leave the power state to the provisioner until it calls the desktop ready
                # (not written at all: see ``_kept_by_others``).
                adopted = {
                    "b_id": owner.id,
                    "updated_at": now,
                    **_values(machine, owner.power_state, owner.agent_state),
                    "external_id": machine.external_id,
                }
                del adopted["power_state"]
                updates.append({**adopted, **_as_read(owner)})
                result.updated.append(machine.name)
                continue
            if machine.desktop_id:
                # Built for a desktop this broker no longer has: a leak for the sweep to
                # report or reap, never a desktop to hand out.
                result.orphans.append(machine.external_id)
                continue
            if room is not None and len(inserts) >= room:
                result.left_out.append(machine.name)
                continue
            values = _values(machine, PowerState.UNKNOWN.value, AgentState.UNKNOWN.value)
            inserts.append(
                {
                    "id": new_id(),
                    "tenant_id": tenant_id,
                    "center_id": center_id,
                    "external_id": machine.external_id,
                    "availability": Availability.AVAILABLE.value,
                    "deletable": False,
                    "created_at": now,
                    "updated_at": now,
                    **values,
                }
            )
            result.added.append(machine.name)
            continue
        values = _values(machine, row.power_state, row.agent_state)
        if row.id in being_built:
            # A build the cloud finished but the provisioner has not handed over yet: it
            # stays ``building`` (counted as coming free) until the provisioner calls it
            # ready. Recorded ``running`` but still unavailable, it would count as neither
            # free nor coming, and the pool would build a replacement for it.
            del values["power_state"]
        if row.id in deleting:
            values.pop("power_state", None)
            del values["agent_state"]
        if any(getattr(row, f) != values[f] for f in _FIELDS if f in values):
            updates.append({"b_id": row.id, "updated_at": now, **values, **_as_read(row)})
            result.updated.append(machine.name)
    if inserts:
        session.execute(insert(Desktop), inserts)
    for group in _kept_by_others(updates):
        columns = [f for f in group[0] if f != "b_id" and not f.startswith("w_")]
        # Core, not ORM: an executemany keyed by a bound id, one statement per batch.
        # Only a row still as read is written: one an agent's report, a hand-over or a
        # removal changed since (on PostgreSQL, committed between this scan's read and
        # its write) is left for the next scan, not overwritten with what was read.
        table = cast(Table, Desktop.__table__)
        session.connection().execute(
            update(table)
            .where(
                table.c.id == bindparam("b_id"),
                table.c.power_state == bindparam("w_power"),
                table.c.agent_state == bindparam("w_agent"),
            )
            .values({f: bindparam(f) for f in columns}),
            group,
        )
    vanished = gone if not complete else set(existing) - seen
    # A desktop still being built has no instance to be seen yet.
    vanished = {e for e in vanished if not e.startswith(PENDING_PREFIX)}
    if complete and vanished and listed_at is not None:
        vanished -= _built_since(session, {existing[e].id: e for e in vanished}, listed_at)
    result.known = sum(
        1
        for e, r in existing.items()
        if not e.startswith(PENDING_PREFIX) and r.power_state != PowerState.DELETED.value
    )
    if complete and vanished and hold:
        # An assigned desktop already recorded deleted stays unseen for good: holding it
        # again at every full scan would only make each one's next scan full too.
        kept = {
            e
            for e in vanished - set(held_before)
            if existing[e].power_state != PowerState.DELETED.value
        }
        result.held_ids = sorted(e for e in kept if e in existing)
        result.held = sorted(existing[e].name for e in result.held_ids)
        vanished -= kept
    _remove(session, [existing[e] for e in vanished if e in existing], result, now)
    return result


def _built_since(session: Session, unseen: Mapping[str, str], listed_at: datetime) -> set[str]:
    """Of the ``unseen`` desktops (desktop id → external id), those whose build moved
    since ``listed_at``: recorded in the cloud, waiting or handed over. Without this, a
    scan whose listing was taken just before a build created its instance would delete
    the new desktop's row and leave the instance running in the cloud, unowned."""
    moved = session.scalars(
        select(ProvisioningTask.desktop_id).where(
            ProvisioningTask.desktop_id.in_(list(unseen)),
            ProvisioningTask.updated_at >= listed_at - CLOCK_SKEW,
        )
    ).all()
    return {unseen[str(d)] for d in moved}


def _remove(session: Session, rows: list[Any], result: SyncResult, now: Any) -> None:
    free = [r.id for r in rows if r.assigned_user_id is None]
    held = [r.id for r in rows if r.assigned_user_id is not None]
    if free:
        # Still free: a desktop a claim gave a user since this scan read it (on
        # PostgreSQL, committed in between) is kept, marked deleted, like any held one.
        gone = session.scalars(
            delete(Desktop)
            .where(Desktop.id.in_(free), Desktop.assigned_user_id.is_(None))
            .returning(Desktop.id)
            .execution_options(synchronize_session=False)
        ).all()
        held += sorted(set(free) - set(gone))
    if held:
        # Keep an assigned desktop visible so its user and admin see what happened.
        session.execute(
            update(Desktop)
            .where(Desktop.id.in_(held))
            .values(
                power_state=from_any(POWER_TRANSITIONS, PowerState.DELETED).value,
                availability=from_any(AVAILABILITY_TRANSITIONS, Availability.UNAVAILABLE).value,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    result.removed.extend(r.name for r in rows)
