"""Admin resources for infrastructure: tenants, centers, images, desktops."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import ResourceSpec, add_routes, scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id, Name, Out, Secrets, Stamped
from deskbroker.centers import registry
from deskbroker.domain.states import AVAILABILITY_TRANSITIONS, Availability, transition
from deskbroker.errors import Conflict, InvalidInput
from deskbroker.protocols.descriptors import Protocol
from deskbroker.services import inventory as inventory_service
from deskbroker.services import outbound_params
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_pools
from deskbroker.store import events, jobs
from deskbroker.store.repository import Repository, bump_config_version
from deskbroker.store.tables import (
    Center,
    Desktop,
    IdentitySource,
    Image,
    Policy,
    Pool,
    PowerPlan,
    ProtocolPlan,
    ReleasePlan,
    Tenant,
    User,
)

# --- tenants -------------------------------------------------------------------------
TenantName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
]
DisplayName = Annotated[str, StringConstraints(max_length=200)]
Quota = Annotated[int, Field(ge=0, le=1_000_000)]


DESKTOPS_QUOTA = (
    "most desktops the tenant may have across all its pools and centers; null is unlimited"
)
SESSIONS_QUOTA = "most concurrent sessions the tenant may have; null is unlimited"


class TenantIn(Body):
    name: TenantName
    display_name: DisplayName = ""
    quota_desktops: Quota | None = Field(default=None, description=DESKTOPS_QUOTA)
    quota_sessions: Quota | None = Field(default=None, description=SESSIONS_QUOTA)


class TenantPatch(Body):
    display_name: DisplayName | None = None
    quota_desktops: Quota | None = Field(default=None, description=DESKTOPS_QUOTA)
    quota_sessions: Quota | None = Field(default=None, description=SESSIONS_QUOTA)


class TenantOut(Out):
    id: str
    name: str
    display_name: str
    quota_desktops: int | None
    quota_sessions: int | None
    created_at: datetime
    updated_at: datetime


_TENANT_OWNED: tuple[tuple[Any, str], ...] = (
    (Center, "centers"),
    (Pool, "pools"),
    (Policy, "policies"),
    (ProtocolPlan, "protocol plans"),
    (PowerPlan, "power plans"),
    (ReleasePlan, "release plans"),
    (User, "users"),
    (IdentitySource, "identity sources"),
)


def _tenant_in_use(session: Session, tenant: Any) -> None:
    for model, label in _TENANT_OWNED:
        if session.scalars(select(model.id).where(model.tenant_id == tenant.id).limit(1)).first():
            raise Conflict(f"tenant {tenant.name} still has {label}; delete them first")


# --- centers -------------------------------------------------------------------------
class CenterIn(Body):
    name: Name
    kind: Name
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: Secrets | None = Field(default=None, description="write-only; encrypted at rest")
    scan_interval_s: int = Field(default=60, ge=5, le=86400)
    tenant_id: Id | None = None


class CenterPatch(Body):
    name: Name | None = None
    params: dict[str, Any] | None = None
    secrets: Secrets | None = Field(default=None, description="write-only; null removes them")
    scan_interval_s: int | None = Field(default=None, ge=5, le=86400)


class CenterOut(Stamped):
    name: str
    kind: str
    params: dict[str, Any]
    has_secrets: bool
    scan_interval_s: int
    status: str
    status_message: str
    last_scan_at: datetime | None


def _prepare_center(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
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
    return data


def _center_out(session: Session, center: Any) -> dict[str, Any]:
    out = {c.key: getattr(center, c.key) for c in Center.__table__.columns}
    out["has_secrets"] = bool(center.secrets_sealed)
    return out


def _scan_after_write(session: Session, ctx: BrokerContext, center: Any) -> None:
    driver = inventory_service.open_center(ctx, center)
    if {"changes", "images"} <= driver.offline:
        # The listing is the params just saved (no host to ask): scanned in the save, so
        # a change that would import desktops beyond the tenant's quota is refused whole.
        listing = inventory_service.look(driver, center)
        inventory_service.record(session, ctx, center, listing, strict_quota=True)
        return
    # A cloud is never asked inside the save's transaction: the engine scans it next.
    center.status, center.status_message = "pending", "a scan is queued"
    jobs.request_scan(session, center.id, center.scan_interval_s)


def _center_in_use(session: Session, center: Any) -> None:
    held = session.scalars(
        select(Desktop.name)
        .where(Desktop.center_id == center.id, Desktop.assigned_user_id.is_not(None))
        .limit(1)
    ).first()
    if held is not None:
        raise Conflict(
            f"center {center.name} has assigned desktops (e.g. {held}); release them first"
        )
    users = sorted(
        pool.name
        for pool in session.scalars(select(Pool).where(Pool.tenant_id == center.tenant_id))
        if center.id in (pool.center_ids or [])
        or (pool.provisioning or {}).get("center_id") == center.id
    )
    if users:
        raise Conflict(
            f"center {center.name} is used by pool{'s' if len(users) > 1 else ''} "
            f"{', '.join(users)}; remove it from them first"
        )
    for desktop in session.scalars(select(Desktop).where(Desktop.center_id == center.id)).all():
        session.delete(desktop)
    session.flush()


class ScanQueued(Out):
    center_id: str
    job_id: str
    last_scan_at: datetime | None = Field(description="the last scan before this one")
    message: str


# --- images --------------------------------------------------------------------------
class ImageOut(Stamped):
    center_id: str
    external_id: str
    name: str
    os: str
    attributes: dict[str, Any]


# --- desktops ------------------------------------------------------------------------
class DesktopPatch(Body):
    availability: Availability | None = None
    attributes: dict[str, Any] | None = None
    deletable: bool | None = None
    max_sessions: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="sessions at once the desktop allows: 1 for a single-user desktop, "
        "more for a multi-session host; its agent cannot report more",
    )


class DesktopOut(Stamped):
    center_id: str
    external_id: str
    name: str
    address: str
    hostname: str
    os: str
    attributes: dict[str, Any]
    power_state: str
    availability: str
    agent_state: str
    reachable: bool | None
    deletable: bool
    max_sessions: int
    assigned_user_id: str | None
    assigned_pool_id: str | None
    assignment_kind: str | None
    assigned_at: datetime | None
    last_used_at: datetime | None


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
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
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
        data["availability"] = wanted.value
    attributes = data.get("attributes")
    if attributes is not None:
        if len(json.dumps(attributes)) > 65536:
            raise InvalidInput("attributes are larger than 64 KiB")
        if "ports" in attributes:
            _check_ports(attributes["ports"])
    return data


def _desktop_after(session: Session, ctx: BrokerContext, desktop: Any) -> None:
    refresh_pools(session, desktop.tenant_id)


def _desktop_delete(session: Session, desktop: Any) -> None:
    if desktop.assigned_user_id is not None:
        raise Conflict(f"desktop {desktop.name} is assigned; release it first")


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="tenants",
        label="tenant",
        model=Tenant,
        read=TenantOut,
        create=TenantIn,
        update=TenantPatch,
        filters={"name": str},
        global_only=True,
        before_delete=_tenant_in_use,
    ),
    ResourceSpec(
        path="centers",
        label="center",
        model=Center,
        read=CenterOut,
        create=CenterIn,
        update=CenterPatch,
        filters={"name": str, "kind": str, "status": str},
        prepare=_prepare_center,
        after_write=_scan_after_write,
        to_read=_center_out,
        before_delete=_center_in_use,
        reaches_users=True,
    ),
    ResourceSpec(
        path="images",
        label="image",
        model=Image,
        read=ImageOut,
        filters={"center_id": str, "name": str, "os": str},
        affects_config=False,
    ),
    ResourceSpec(
        path="desktops",
        label="desktop",
        model=Desktop,
        read=DesktopOut,
        update=DesktopPatch,
        filters={
            "center_id": str,
            "name": str,
            "power_state": str,
            "availability": str,
            "assigned_user_id": str,
            "assigned_pool_id": str,
            "address": str,
        },
        prepare=_prepare_desktop,
        after_write=_desktop_after,
        before_delete=_desktop_delete,
        affects_config=False,
    ),
]


def router() -> APIRouter:
    r = APIRouter()
    for spec in SPECS:
        add_routes(r, spec)

    @r.post(
        "/centers/{center_id}/scan",
        tags=["centers"],
        summary="Scan a center now",
        status_code=202,
        response_model=ScanQueued,
    )
    def scan_center(
        center_id: str, ctx: Ctx, who: AdminWriter, response: Response
    ) -> dict[str, Any]:
        """Queue a scan for the engine's next tick and answer at once: a center that
        is slow or never answers must hold neither this request nor the database.
        Poll the center (``Location``): its ``last_scan_at`` moves on and its
        ``status`` and ``status_message`` tell what the scan found."""
        with ctx.db.write() as session:
            center = Repository(Center, "center").get(session, center_id, scope(who))
            job = jobs.request_scan(session, center.id, center.scan_interval_s)
            bump_config_version(session)
            events.append(
                session,
                "admin.scan",
                tenant_id=center.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                detail={"resource": "centers", "id": center.id, "name": center.name},
            )
            queued = {
                "center_id": center.id,
                "job_id": job.id,
                "last_scan_at": center.last_scan_at,
                "message": "scan queued; the center's last_scan_at moves on when it is done",
            }
        response.headers["Location"] = f"/api/v1/admin/centers/{center_id}"
        return queued

    @r.post("/desktops/{desktop_id}/probe", tags=["desktops"], summary="Probe protocol ports")
    def probe_desktop(desktop_id: str, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        result = inventory_service.probe(ctx, desktop_id, scope(who))
        with ctx.db.write() as session:
            desktop = session.get(Desktop, desktop_id)
            events.append(
                session,
                "admin.probe",
                tenant_id=desktop.tenant_id if desktop else who.tenant_id,
                actor=who.username,
                user_id=who.user_id,
                desktop_id=desktop_id,
                detail={"resource": "desktops", "reachable": result["reachable"]},
            )
        return result

    return r
