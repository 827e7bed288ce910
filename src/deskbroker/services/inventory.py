"""Center scans and reachability probes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.centers import registry
from deskbroker.centers.base import CenterDriver, MachineInfo
from deskbroker.domain.states import POWER_TRANSITIONS, Availability, PowerState
from deskbroker.errors import DeskbrokerError, NotFound
from deskbroker.protocols.descriptors import DEFAULT_PORTS
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Center, Desktop, utcnow


@dataclass
class ScanReport:
    center_id: str
    status: str
    message: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "center_id": self.center_id,
            "status": self.status,
            "message": self.message,
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
        }


def open_center(ctx: BrokerContext, center: Center) -> CenterDriver:
    secrets: dict[str, str] = {}
    if center.secrets_sealed:
        secrets = json.loads(ctx.secrets.open(center.secrets_sealed))
    return registry.open_driver(center.kind, center.params or {}, secrets)


def next_power(current: str, reported: PowerState) -> str:
    """The power state a scan records; an unexpected jump passes through ``unknown``."""
    now = PowerState(current) if current in PowerState._value2member_map_ else PowerState.UNKNOWN
    if now == reported or reported in POWER_TRANSITIONS[now]:
        return reported.value
    return PowerState.UNKNOWN.value


def _apply(desktop: Desktop, machine: MachineInfo) -> bool:
    changes = {
        "name": machine.name,
        "address": machine.address,
        "hostname": machine.hostname,
        "os": machine.os,
        "attributes": dict(machine.attributes),
        "power_state": next_power(desktop.power_state, machine.power_state),
        "driver_state": dict(machine.driver_state),
    }
    changed = False
    for key, value in changes.items():
        if getattr(desktop, key) != value:
            setattr(desktop, key, value)
            changed = True
    return changed


def scan(session: Session, ctx: BrokerContext, center: Center) -> ScanReport:
    """Bring the center's desktops in line with what the center reports."""
    from deskbroker.services.desktops import refresh_pools

    report = ScanReport(center.id, "ok", "")
    try:
        machines = open_center(ctx, center).inventory()
    except DeskbrokerError as exc:
        report.status, report.message = "error", exc.detail
    except Exception as exc:  # a driver's own failure becomes the center's status
        report.status, report.message = "error", f"scan failed: {exc}"
    center.status, center.last_scan_at = report.status, utcnow()
    if report.status != "ok":
        center.status_message = report.message
        return report
    existing = {
        d.external_id: d
        for d in session.scalars(select(Desktop).where(Desktop.center_id == center.id)).all()
    }
    for machine in machines:
        desktop = existing.pop(machine.external_id, None)
        if desktop is None:
            desktop = Desktop(
                tenant_id=center.tenant_id,
                center_id=center.id,
                external_id=machine.external_id,
                availability=Availability.AVAILABLE.value,
                power_state=PowerState.UNKNOWN.value,
                attributes={},
                driver_state={},
            )
            _apply(desktop, machine)
            session.add(desktop)
            report.added.append(machine.name)
        elif _apply(desktop, machine):
            report.updated.append(machine.name)
    for gone in existing.values():
        if gone.assigned_user_id is None:
            session.delete(gone)
        else:
            # Keep an assigned desktop visible so its user and admin see what happened.
            gone.power_state = PowerState.DELETED.value
            gone.availability = Availability.UNAVAILABLE.value
        report.removed.append(gone.name)
    session.flush()
    report.message = (
        f"{len(machines)} machines: {len(report.added)} new, {len(report.updated)} changed, "
        f"{len(report.removed)} gone"
    )
    center.status_message = report.message
    refresh_pools(session, center.tenant_id)
    return report


def probe(ctx: BrokerContext, desktop_id: str, tenant_id: str | None) -> dict[str, Any]:
    """Try each protocol port of a desktop and record whether any answered."""
    with ctx.db.read() as session:
        query = select(Desktop).where(Desktop.id == desktop_id)
        if tenant_id is not None:
            query = query.where(Desktop.tenant_id == tenant_id)
        desktop = session.scalars(query).first()
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        center = session.get(Center, desktop.center_id)
        assert center is not None
        driver = open_center(ctx, center)
        ports = (desktop.attributes or {}).get("ports") or {}
        address = desktop.address
    results: dict[str, Any] = {}
    for protocol, default in DEFAULT_PORTS.items():
        port = int(ports.get(protocol.value) or default)
        outcome = driver.probe(address, port, timeout_s=1.0)
        results[protocol.value] = {
            "port": port,
            "reachable": outcome.reachable,
            "latency_ms": outcome.latency_ms,
            "message": outcome.message,
        }
    reachable = any(r["reachable"] for r in results.values())
    with ctx.db.write() as session:
        row = session.get(Desktop, desktop_id)
        if row is not None:
            row.reachable = reachable
    return {"desktop_id": desktop_id, "reachable": reachable, "protocols": results}
