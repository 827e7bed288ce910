"""Admin resources for infrastructure: tenants, centers, images, desktops."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import AfterValidator, Field, StringConstraints

from deskbroker.api.admin.crud import ResourceSpec, add_routes, scope
from deskbroker.api.deps import AdminWriter, Ctx
from deskbroker.api.schemas import Body, Id, Name, Out, Secrets, Stamped
from deskbroker.domain.states import Availability
from deskbroker.services import gateway, inventory_catalog

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


# --- centers -------------------------------------------------------------------------
DIRECT_NETWORKS = (
    "client networks (CIDRs such as 10.20.0.0/16) that reach this center's desktops "
    "themselves: a native viewer there connects directly, any other client through the "
    "gateway; HTML5 desktops always go through the gateway"
)
DirectNetworks = Annotated[
    list[Annotated[str, StringConstraints(max_length=64)]],
    Field(max_length=100, description=DIRECT_NETWORKS),
    AfterValidator(gateway.normalised_networks),
]


Vouch = Annotated[
    bool | None,
    Field(
        description="a global administrator's word (in person) that they vouch for the "
        "machines this center lists: only then does a pool offered to a global administrator "
        "take its desktops by filters alone. Default on a global administrator's create: "
        "true; anyone else's change clears it",
    ),
]


class CenterIn(Body):
    name: Name
    kind: Name
    params: dict[str, Any] = Field(default_factory=dict)
    secrets: Secrets | None = Field(default=None, description="write-only; encrypted at rest")
    scan_interval_s: int = Field(default=60, ge=5, le=86400)
    tenant_id: Id | None = None
    direct_networks: DirectNetworks = Field(default_factory=list)
    vouched_by_global_admin: Vouch = None


class CenterPatch(Body):
    name: Name | None = None
    params: dict[str, Any] | None = None
    secrets: Secrets | None = Field(default=None, description="write-only; null removes them")
    scan_interval_s: int | None = Field(default=None, ge=5, le=86400)
    direct_networks: DirectNetworks | None = None
    vouched_by_global_admin: Vouch = None


class CenterOut(Stamped):
    name: str
    kind: str
    params: dict[str, Any]
    has_secrets: bool
    scan_interval_s: int
    status: str
    status_message: str
    last_scan_at: datetime | None
    direct_networks: list[str]
    drained_at: datetime | None = Field(
        default=None, description="since when no login gets a desktop of it (null: not drained)"
    )
    vouched_by_global_admin: bool | None = Field(
        default=None,
        description="a global administrator vouches for the machines it lists (null: a "
        "center from before this was recorded, read as not): a pool offered to a global "
        "administrator takes by its filters alone only such centers' desktops",
    )


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
    ssh_host_keys: (
        Annotated[
            list[Annotated[str, StringConstraints(max_length=4096)]],
            Field(max_length=gateway.MAX_HOST_KEYS),
            AfterValidator(gateway.normalised_host_keys),
        ]
        | None
    ) = Field(
        default=None,
        description="the desktop's SSH host keys, OpenSSH public key lines (the contents of "
        "/etc/ssh/ssh_host_*_key.pub): SSH in the browser logs in only to a desktop showing "
        "one of them; [] forgets them",
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
    ssh_host_keys: list[str]
    drained_at: datetime | None = Field(
        default=None, description="since when no login gets it (null: not drained)"
    )


SPECS: list[ResourceSpec[Any]] = [
    ResourceSpec(
        path="tenants",
        resource=inventory_catalog.TENANTS,
        read=TenantOut,
        create=TenantIn,
        update=TenantPatch,
        filters={"name": str},
    ),
    ResourceSpec(
        path="centers",
        resource=inventory_catalog.CENTERS,
        read=CenterOut,
        create=CenterIn,
        update=CenterPatch,
        # DELETE is admin/removal.py's: it takes ?force=true for a cloud gone for good.
        deletable=False,
        filters={"name": str, "kind": str, "status": str},
    ),
    ResourceSpec(
        path="images",
        resource=inventory_catalog.IMAGES,
        read=ImageOut,
        filters={"center_id": str, "name": str, "os": str},
    ),
    ResourceSpec(
        path="desktops",
        resource=inventory_catalog.DESKTOPS,
        read=DesktopOut,
        update=DesktopPatch,
        # DELETE is admin/removal.py's: terminate what the broker built, forget the rest.
        deletable=False,
        filters={
            "center_id": str,
            "name": str,
            "power_state": str,
            "availability": str,
            "assigned_user_id": str,
            "assigned_pool_id": str,
            "address": str,
        },
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
        queued = inventory_catalog.request_scan(ctx, who, center_id, scope(who))
        response.headers["Location"] = f"/api/v1/admin/centers/{center_id}"
        return {
            "center_id": queued.center_id,
            "job_id": queued.job_id,
            "last_scan_at": queued.last_scan_at,
            "message": queued.message,
        }

    @r.post("/desktops/{desktop_id}/probe", tags=["desktops"], summary="Probe protocol ports")
    def probe_desktop(desktop_id: str, ctx: Ctx, who: AdminWriter) -> dict[str, Any]:
        result = inventory_catalog.probe(ctx, who, desktop_id, scope(who))
        return result

    return r
