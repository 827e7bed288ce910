"""Center scans and reachability probes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from deskbroker.centers.base import Capability, CenterDriver, Changes, ImageInfo, MachineInfo
from deskbroker.domain import scans
from deskbroker.domain.timestamps import aware
from deskbroker.errors import DeskbrokerError, QuotaReached
from deskbroker.protocols.descriptors import DEFAULT_PORTS
from deskbroker.services import quotas
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_pools
from deskbroker.store import desktop_sync, events, images, membership
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Desktop, utcnow

log = logging.getLogger(__name__)


@dataclass
class ScanReport:
    center_id: str
    status: str
    message: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    full: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "center_id": self.center_id,
            "status": self.status,
            "message": self.message,
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "full": self.full,
        }


def open_center(ctx: BrokerContext, center: Center) -> CenterDriver:
    """The center's driver from the process's shared cache (authenticated once)."""
    return ctx.drivers.get(center)


def _full_scan_due(center: Center, now: datetime) -> bool:
    if center.scan_cursor is None or center.last_full_scan_at is None:
        return True
    last = aware(center.last_full_scan_at)
    return (now - last).total_seconds() >= center.full_scan_interval_s


def _duplicate(machines: Sequence[MachineInfo]) -> str | None:
    """The first machine id reported twice; a scan cannot tell such machines apart."""
    seen: set[str] = set()
    for machine in machines:
        if machine.external_id in seen:
            return machine.external_id
        seen.add(machine.external_id)
    return None


@dataclass(frozen=True)
class Listing:
    """What one look at a center found, taken with no transaction open."""

    started: datetime
    incremental: bool
    changes: Changes | None = None
    images: list[ImageInfo] | None = None
    error: str = ""
    # The listing is the broker's own (no cloud to page or filter it differently).
    authoritative: bool = False


def look(driver: CenterDriver, center: Center, *, full: bool | None = None) -> Listing:
    """Ask the center what it has: the network half of a scan. Must run outside any
    write unit (the driver's calls refuse otherwise); failures become ``error``."""
    started = datetime.now(UTC)
    incremental = (
        not (full if full is not None else _full_scan_due(center, started))
        and Capability.CHANGES in driver.capabilities
        and center.scan_cursor is not None
    )
    authoritative = driver.listing_is_own
    try:
        seen = driver.changes(center.scan_cursor if incremental else None)
        # Images change rarely: read them on full scans only.
        images = (
            driver.images()
            if not incremental and Capability.IMAGES in driver.capabilities
            else None
        )
    except DeskbrokerError as exc:
        return Listing(started, incremental, error=exc.detail)
    except Exception as exc:  # a driver's own failure becomes the center's status
        # Its text may quote whatever the center's URL answered: logged, not shown.
        log.warning("scan of center %s failed", center.id, exc_info=True)
        return Listing(started, incremental, error=f"scan failed: {type(exc).__name__}")
    # Two machines with one id cannot both be stored; say so instead of failing.
    twice = _duplicate(seen.machines)
    if twice is not None:
        return Listing(
            started, incremental, error=f"the center lists the machine {twice} more than once"
        )
    return Listing(started, incremental, seen, images, authoritative=authoritative)


def scan(
    session: Unit,
    ctx: BrokerContext,
    center: Center,
    *,
    full: bool | None = None,
    driver: CenterDriver | None = None,
    strict_quota: bool = False,
) -> ScanReport:
    """Look and record in the caller's transaction: only for a center whose listing
    reaches no host (a static center's params); any other driver refuses to be called
    inside a write unit, so use ``scan_center`` for those."""
    listing = look(driver or open_center(ctx, center), center, full=full)
    return record(session, ctx, center, listing, strict_quota=strict_quota)


def _stamp(center: Center) -> tuple[Any, ...]:
    """What must not change between the look and the record: the connection, and the
    last scan (another scan that finished in between saw later news than ours)."""
    return (
        center.kind,
        center.secrets_sealed,
        json.dumps(center.params, sort_keys=True),
        center.scan_cursor,
        center.last_scan_at,
    )


def scan_center(
    ctx: BrokerContext,
    center_id: str,
    *,
    driver_of: Callable[[Center], CenterDriver] | None = None,
    full: bool | None = None,
    strict_quota: bool = False,
) -> ScanReport | None:
    """A scan in three steps, none of which holds the database while the center is
    asked: read the center, look with no transaction open, then record in a short unit
    that first checks the center is still as read. ``None``: the center is gone."""
    with ctx.db.read() as session:
        center = session.get(Center, center_id)
        if center is None:
            return None
        session.expunge(center)
    driver = (driver_of or (lambda c: open_center(ctx, c)))(center)
    listing = look(driver, center, full=full)
    with ctx.db.write() as session:
        # First: the record may refresh the tenant's pools, and an administrator's edit
        # of this center holds them before it waits for the center's row
        # (``membership.hold``).
        membership.hold(session, center.tenant_id)
        # FOR NO KEY UPDATE, not FOR UPDATE: scans of one center and its edits still take
        # turns, but a build inserting a desktop of this center (its foreign key takes a
        # KEY SHARE lock of the center's row) is not blocked. Provisioning holds the
        # tenant's row while it inserts, and the scan takes the tenant's row after the
        # center's: with FOR UPDATE the two waited for each other (a deadlock).
        row = session.get(Center, center_id, with_for_update={"key_share": True})
        if row is None:
            return None
        if _stamp(row) != _stamp(center):
            return ScanReport(
                center_id,
                row.status,
                "the center changed during the scan; the next scan looks again",
                full=not listing.incremental,
            )
        return record(session, ctx, row, listing, strict_quota=strict_quota)


def record(
    session: Unit,
    ctx: BrokerContext,
    center: Center,
    listing: Listing,
    *,
    strict_quota: bool = False,
) -> ScanReport:
    """Bring the center's desktops in line with what ``listing`` saw: the database half
    of a scan.

    Drivers that can list changes since a cursor get incremental scans, with a full
    reconcile every ``full_scan_interval_s`` (or when ``full`` is asked for).

    New machines beyond the tenant's desktop quota are not imported: a background scan
    says so in the center's status, while ``strict_quota`` (an admin's save) refuses
    the whole change with ``QuotaReached``, so nothing is half written.

    A full listing of a cloud removes nothing on its own: the desktops it did not show
    are kept (their ids in ``held_unseen``), the next scan is full again, and it removes
    only those it misses too. A listing that shows far fewer machines than the broker
    knows also turns the center ``degraded``. What the cloud states itself (a server
    deleted, or gone from a listing of changes) is believed at once, as is a static
    center's list, the operator's own word.
    """
    report = ScanReport(center.id, "ok", "")
    started, incremental = listing.started, listing.incremental
    center.last_scan_at = utcnow()
    seen = listing.changes
    if listing.error or seen is None:
        _note_degraded(session, center, "error", listing.error)
        center.status = report.status = "error"
        center.status_message = report.message = listing.error
        return report
    report.full = not incremental
    machines = seen.machines
    if listing.images is not None:
        sync_images(session, center, listing.images)
    quota = quotas.desktop_room(session, center.tenant_id)
    result = desktop_sync.sync(
        session,
        tenant_id=center.tenant_id,
        center_id=center.id,
        machines=[seen_machine(m) for m in machines],
        gone=seen.gone,
        complete=not incremental,
        room=quota.room,
        hold=scans.hold_removals(authoritative=listing.authoritative),
        held_before=center.held_unseen or (),
        listed_at=started,
    )
    if result.left_out:
        _over_quota(center, quota, len(result.added), result.left_out, strict_quota)
    report.added, report.updated, report.removed = result.added, result.updated, result.removed
    # The driver's cursor comes from the center's own clock; without one, ask for
    # changes since slightly before this scan began so nothing slips between.
    center.scan_cursor = seen.cursor or (started - timedelta(seconds=2)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    if not incremental:
        # What this look kept is what the next full one must miss too before it goes.
        center.held_unseen = result.held_ids
        # A held scan makes the next one full, at the next scan interval rather than the
        # full scan's, whatever made this one full: that is the look that must agree.
        center.last_full_scan_at = None if result.held else started
    report.message = (
        f"{'full' if report.full else 'incremental'} scan: {len(machines)} machines seen, "
        f"{len(result.added)} new, {len(result.updated)} changed, {len(result.removed)} gone"
    )
    short = bool(result.held) and scans.looks_short(result.known, len(machines))
    if result.held and not short:
        report.message += (
            f"; {len(result.held)} unseen desktop{_s(result.held)} kept until the next full "
            "scan agrees"
        )
    if result.partial:
        report.message += (
            f"; {len(result.partial)} known only by id (part of the cloud did not answer), "
            "kept as last seen"
        )
    if short:
        report.status = "degraded"
        report.message = (
            f"full scan saw {len(machines)} machines where the broker knows {result.known}; "
            f"{len(result.held)} unseen desktop{_s(result.held)} kept until the next full "
            "scan agrees "
            "(a cloud that pages or filters its listing differently looks like this)"
        )
        if result.removed:
            report.message += (
                f"; {len(result.removed)} gone that the previous full scan missed as well"
            )
    elif result.left_out:
        report.status = "quota"
        report.message += (
            f"; {len(result.left_out)} not imported: {quota.words(quota.used + len(result.added))}"
        )
    _note_degraded(session, center, report.status, report.message)
    center.status, center.status_message = report.status, report.message
    if result.changed:
        refresh_pools(session, center.tenant_id)
    return report


def _s(items: Sequence[object]) -> str:
    return "" if len(items) == 1 else "s"


# A center in one of these has stopped being trustworthy; entering one is an event.
_DEGRADED = frozenset({"error", "degraded"})


def _note_degraded(session: Unit, center: Center, status: str, message: str) -> None:
    """A ``center.degraded`` event when a scan takes the center into error or degraded
    (once, on the way in: a center that stays down writes no event per scan)."""
    if status in _DEGRADED and center.status not in _DEGRADED:
        events.append(
            session,
            "center.degraded",
            tenant_id=center.tenant_id,
            actor="scan",
            detail={
                "center_id": center.id,
                "center": center.name,
                "status": status,
                "message": message[:500],
            },
        )


def _over_quota(
    center: Center, quota: quotas.DesktopRoom, added: int, left: list[str], strict: bool
) -> None:
    if not strict:
        return
    new = added + len(left)
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    raise QuotaReached(
        f"center {center.name} has {new} new machine{'s' * (new > 1)}, {len(left)} more than "
        f"the tenant's desktop quota leaves room for ({quota.words()}; not imported: "
        f"{shown}); ask a global administrator to raise the quota, or remove desktops first",
        quota="desktops",
        used=quota.used,
        limit=quota.limit,
    )


def catalog(ctx: BrokerContext, center: Center) -> dict[str, Any]:
    """The center's pickers; a center that cannot provision offers empty lists."""
    return dict(open_center(ctx, center).catalog())


def seen_machine(machine: MachineInfo) -> desktop_sync.SeenMachine:
    """The store's record of a machine a center reported."""
    return desktop_sync.SeenMachine(
        external_id=machine.external_id,
        name=machine.name,
        address=machine.address,
        hostname=machine.hostname,
        os=machine.os,
        power_state=machine.power_state,
        attributes=machine.attributes,
        driver_state=machine.driver_state,
        desktop_id=machine.desktop_id,
        partial=machine.partial,
    )


def sync_images(session: Unit, center: Center, offered: list[ImageInfo]) -> None:
    """Keep the center's image rows in line with what it offers."""
    seen = [images.SeenImage(i.external_id, i.name, i.os, i.attributes) for i in offered]
    images.sync(session, center.tenant_id, center.id, seen)


def scoped_desktop(session: Unit, desktop_id: str, tenant_id: str | None) -> Desktop:
    """A desktop by id as an administrator of ``tenant_id`` (``None``: every tenant) may
    see it; another tenant's is as missing as one that never existed."""
    return Repository(Desktop, "desktop").get(session, desktop_id, tenant_id)


def probe(ctx: BrokerContext, desktop_id: str, tenant_id: str | None) -> dict[str, Any]:
    """Try each protocol port of a desktop and record whether any answered."""
    with ctx.db.read() as session:
        desktop = scoped_desktop(session, desktop_id, tenant_id)
        center = session.get(Center, desktop.center_id)
        assert center is not None
        driver = open_center(ctx, center)
        ports = (desktop.attributes or {}).get("ports") or {}
        address = desktop.address

    def knock() -> dict[str, Any]:
        # Each port once: protocols sharing a port (several on 22, say) share the answer.
        by_port: dict[int, Any] = {}
        results: dict[str, Any] = {}
        for protocol, default in DEFAULT_PORTS.items():
            port = int(ports.get(protocol.value) or default)
            if port not in by_port:
                by_port[port] = driver.probe(address, port, timeout_s=1.0)
            outcome = by_port[port]
            results[protocol.value] = {
                "port": port,
                "reachable": outcome.reachable,
                "latency_ms": outcome.latency_ms,
                "message": outcome.message,
            }
        return results

    # A request thread per probe of an address that never answers (or a name that takes
    # its resolver's time): counted against the tenant's cap, as its clouds' calls are.
    results = ctx.sources.tenant_call(center.tenant_id, f"probe desktop {desktop_id}", knock)
    reachable = any(r["reachable"] for r in results.values())
    with ctx.db.write() as session:
        row = session.get(Desktop, desktop_id)
        if row is not None:
            row.reachable = reachable
    return {"desktop_id": desktop_id, "reachable": reachable, "protocols": results}
