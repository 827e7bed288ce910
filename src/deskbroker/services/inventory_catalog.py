"""The infrastructure in the admin catalog: tenants, centers, images, desktops, and what
keeps them valid (a center's parameters checked by its driver, a desktop's availability
moved by its table, nothing deleted that is still in use); asking for a scan; auditing a
probe."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deskbroker.centers import registry
from deskbroker.domain.membership import ENGINE_PREFIX
from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.provisioning import Provisioning
from deskbroker.domain.states import AVAILABILITY_TRANSITIONS, Availability, transition
from deskbroker.errors import Conflict, Forbidden, InvalidInput
from deskbroker.protocols.descriptors import Protocol
from deskbroker.security import TokenClaims
from deskbroker.services import inventory as inventory_service
from deskbroker.services import outbound_params, standing, write_context
from deskbroker.services.catalog_crud import Resource, audit_event
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_pools
from deskbroker.store import jobs, membership, references, removals
from deskbroker.store import sessions as timer_rows
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Center, Desktop, Image, Tenant


# --- tenants -------------------------------------------------------------------------
def _tenant_in_use(session: Unit, tenant: Any) -> None:
    left = references.tenant_still_owns(session, tenant.id)
    if left is not None:
        raise Conflict(f"tenant {tenant.name} still has {left}; delete them first")


TENANTS: Resource[Tenant] = Resource(
    model=Tenant, label="tenant", global_only=True, before_delete=_tenant_in_use
)


# --- centers -------------------------------------------------------------------------
def _prepare_center(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    kind = data.get("kind") or existing.kind
    if "params" in data or existing is None:
        data["params"] = registry.validate_params(kind, data.get("params") or {})
        outbound_params.vet(
            session,
            ctx,
            what=f"a {kind} center's",
            params_model=registry.driver_class(kind).Params,
            params=data["params"],
            previous=existing.params if existing is not None else None,
            data=data,
        )
    else:
        registry.driver_class(kind)
    if "secrets" in data:
        secrets = data.pop("secrets")
        data["secrets_sealed"] = ctx.secrets.seal(json.dumps(secrets)) if secrets else None
    _vouch(session, data, existing)
    return data


def _vouch(session: Unit, data: dict[str, Any], existing: Any) -> None:
    """Whether a global administrator vouches for the machines the center lists
    (``PoolDefinition.guarded``). Only their explicit word, or their create, vouches: a
    rename or a new scan interval says nothing of who controls the cloud behind it. Any
    change by someone else clears it (they may have pointed it elsewhere). A broker's own
    write (no actor: the operator's command line) counts as a global administrator's."""
    found = write_context.actor_if_any(session)
    global_admin = found is None or (
        found.actor.role == BuiltinRole.GLOBAL_ADMIN.value and found.actor.scopes is None
    )
    said = data.pop("vouched_by_global_admin", None)
    if said and not global_admin:
        raise Forbidden("only a global administrator (in person) can vouch for a center")
    if not global_admin:
        data["vouched_by_global_admin"] = False
    elif said is not None:
        data["vouched_by_global_admin"] = bool(said)
    elif existing is None:
        data["vouched_by_global_admin"] = True
    now = data.get(
        "vouched_by_global_admin", existing.vouched_by_global_admin if existing else None
    )
    if existing is not None and bool(now) != bool(existing.vouched_by_global_admin):
        # Its desktops join, or leave, the pools offered to a global administrator now.
        session.info[_VOUCH_MOVED] = True


_VOUCH_MOVED = "deskbroker.center_vouch_moved"


def _center_out(session: Unit, center: Any) -> dict[str, Any]:
    # Never the sealed secrets themselves: only whether there are any.
    out = {c.key: getattr(center, c.key) for c in Center.__table__.columns}
    out["has_secrets"] = bool(center.secrets_sealed)
    return out


def _scan_after_write(session: Unit, ctx: BrokerContext, center: Any) -> None:
    if session.info.pop(_VOUCH_MOVED, False):
        membership.guard_changed(session, center.tenant_id)
        refresh_pools(session, center.tenant_id)
    driver = inventory_service.open_center(ctx, center)
    if {"changes", "images"} <= driver.offline:
        # The listing is the params just saved (no host to ask): scanned in the save, so
        # a change that would import desktops beyond the tenant's quota is refused whole.
        listing = inventory_service.look(driver, center)
        inventory_service.record(session, ctx, center, listing, strict_quota=True)
        # Checked again with the pools its desktops joined: a new machine may match the
        # filters of a pool a stronger account's rule hands out.
        standing.check_reach(session, center, "center", "save")
        return
    # A cloud is never asked inside the save's transaction: the engine scans it next.
    center.status, center.status_message = "pending", "a scan is queued"
    jobs.request_scan(session, center.id, center.scan_interval_s)


def _center_in_use(session: Unit, center: Any) -> None:
    removing = len(removals.delete_requested_ids(session, center.id))
    if removing:
        # Their rows are the removal job's only record of the machines to terminate.
        raise Conflict(
            f"center {center.name} is still removing {removing} desktop"
            f"{'' if removing == 1 else 's'}; delete it once they are gone"
        )
    clear_for_delete(session, center)


def clear_for_delete(session: Unit, center: Center) -> None:
    """Refuse (409) the delete of a center a user holds a desktop of, or a pool uses;
    else forget its desktops. All a forced delete checks (``services/center_removal``):
    only desktops being removed may be dropped by force."""
    held = references.assigned_desktop_of_center(session, center.id)
    if held is not None:
        raise Conflict(
            f"center {center.name} has assigned desktops (e.g. {held}); release them first"
        )
    users = sorted(
        pool.name
        for pool in references.tenant_pools(session, center.tenant_id)
        if center.id in (pool.center_ids or [])
        or Provisioning.from_stored(pool.provisioning).center_id == center.id
    )
    if users:
        raise Conflict(
            f"center {center.name} is used by pool{'s' if len(users) > 1 else ''} "
            f"{', '.join(users)}; remove it from them first"
        )
    references.delete_desktops_of_center(session, center.id)


CENTERS: Resource[Center] = Resource(
    model=Center,
    label="center",
    prepare=_prepare_center,
    after_write=_scan_after_write,
    to_read=_center_out,
    before_delete=_center_in_use,
    reaches_users=True,
    holds_membership=True,
)

IMAGES: Resource[Image] = Resource(model=Image, label="image", affects_config=False)


# --- desktops ------------------------------------------------------------------------
def _check_ports(ports: Any) -> None:
    """``attributes.ports`` overrides protocol ports, so it must be protocol -> port."""
    if not isinstance(ports, dict):
        raise InvalidInput('attributes.ports must map a protocol to a port, e.g. {"vnc": 5901}')
    for protocol, port in ports.items():
        if protocol not in Protocol._value2member_map_:
            known = ", ".join(p.value for p in Protocol)
            raise InvalidInput(f"attributes.ports: unknown protocol {protocol!r}; known: {known}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"attributes.ports.{protocol} must be a port from 1 to 65535")


def _prepare_desktop(
    session: Unit, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    if "availability" in data and data["availability"] is not None:
        wanted = Availability(data["availability"])
        if existing is not None:
            wanted = transition(
                AVAILABILITY_TRANSITIONS,
                Availability(existing.availability),
                wanted,
                subject=f"desktop {existing.name}",
            )
            # The administrator's word from now on: a terminate timer that had taken the
            # desktop out must not put it back.
            timer_rows.disown_take_out(session, existing.id)
        data["availability"] = wanted.value
    attributes = data.get("attributes")
    if attributes is not None:
        if len(json.dumps(attributes)) > 65536:
            raise InvalidInput("attributes are larger than 64 KiB")
        if "ports" in attributes:
            _check_ports(attributes["ports"])
        data["attributes"] = _keep_engine_marks(attributes, existing)
    return data


def _keep_engine_marks(attributes: Any, existing: Any) -> Any:
    """The ``meta.deskbroker_*`` attributes are the engine's (which pool built the
    desktop): an edit may send them back as they are, or leave them out (they are
    kept), but not set or change one, which would put the desktop in a pool."""
    if not isinstance(attributes, dict):
        raise InvalidInput("attributes must be an object")
    stored = dict(existing.attributes or {}) if existing is not None else {}
    for key, value in attributes.items():
        if str(key).startswith(ENGINE_PREFIX) and stored.get(key) != value:
            raise InvalidInput(
                f"attributes.{key} is the broker's own (the pool that built the desktop) "
                f"and cannot be set by an administrator; leave out every {ENGINE_PREFIX}* "
                "attribute"
            )
    kept = {k: v for k, v in stored.items() if k.startswith(ENGINE_PREFIX)}
    return {**attributes, **kept}


def _desktop_after(session: Unit, ctx: BrokerContext, desktop: Any) -> None:
    refresh_pools(session, desktop.tenant_id)
    # Checked again with the pools it holds now: new attributes may match the filters of
    # a pool a stronger account's rule hands out.
    standing.check_reach(session, desktop, "desktop", "change")


def _desktop_delete(session: Unit, desktop: Any) -> None:
    if desktop.assigned_user_id is not None:
        raise Conflict(f"desktop {desktop.name} is assigned; release it first")


DESKTOPS: Resource[Desktop] = Resource(
    model=Desktop,
    label="desktop",
    prepare=_prepare_desktop,
    after_write=_desktop_after,
    before_delete=_desktop_delete,
    affects_config=False,
    reaches_users=True,
    holds_membership=True,
)


# --- actions -------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanQueued:
    center_id: str
    job_id: str
    last_scan_at: datetime | None  # the last scan before this one
    message: str


def request_scan(
    ctx: BrokerContext, who: TokenClaims, center_id: str, tenant_id: str | None
) -> ScanQueued:
    """Queue a scan of the center for the engine's next tick, at once: a center that is
    slow or never answers holds neither the caller nor the database."""
    with ctx.db.write() as session:
        center = Repository(Center, "center").get(session, center_id, tenant_id)
        job = jobs.request_scan(session, center.id, center.scan_interval_s)
        bump_config_version(session, center.tenant_id)
        audit_event(
            session,
            who,
            "admin.scan",
            tenant_id=center.tenant_id,
            detail={"resource": "centers", "id": center.id, "name": center.name},
        )
        return ScanQueued(
            center_id=center.id,
            job_id=job.id,
            last_scan_at=center.last_scan_at,
            message="scan queued; the center's last_scan_at moves on when it is done",
        )


def probe(
    ctx: BrokerContext, who: TokenClaims, desktop_id: str, tenant_id: str | None
) -> dict[str, Any]:
    """Probe the desktop's protocol ports (``services.inventory.probe``), then audit it."""
    result = inventory_service.probe(ctx, desktop_id, tenant_id)
    with ctx.db.write() as session:
        desktop = session.get(Desktop, desktop_id)
        audit_event(
            session,
            who,
            "admin.probe",
            tenant_id=desktop.tenant_id if desktop else who.tenant_id,
            desktop_id=desktop_id,
            detail={"resource": "desktops", "reachable": result["reachable"]},
        )
    return result
