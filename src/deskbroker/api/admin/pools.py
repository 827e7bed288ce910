"""Admin resources for pools and their status, members and queue."""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deskbroker.api.admin.crud import ResourceSpec, add_routes, must_exist, scope
from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.api.schemas import Body, FilterIn, Id, Name, Stamped, Text
from deskbroker.centers import registry
from deskbroker.domain import tags
from deskbroker.domain.membership import creates_cycle
from deskbroker.domain.quotas import words as quota_words
from deskbroker.domain.states import ACTIVE_SESSION_STATES
from deskbroker.errors import Conflict, InvalidInput
from deskbroker.services import pools as pool_service
from deskbroker.services.context import BrokerContext
from deskbroker.services.queues import refresh_pools
from deskbroker.store import jobs
from deskbroker.store import quotas as tenant_quotas
from deskbroker.store.repository import Repository
from deskbroker.store.tables import (
    Center,
    Desktop,
    Policy,
    PolicyEntry,
    Pool,
    PoolMember,
    ProvisioningTask,
    QueueEntry,
    SessionRow,
    User,
)

Clock = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class Window(Body):
    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(min_length=1, max_length=7)
    start: Clock
    end: Clock
    min_unassigned: int = Field(ge=0, le=100000)
    max_total: int = Field(ge=0, le=100000)


class ProvisioningParameters(Body):
    """The broker's own provisioning parameters. Any other key (an image, a flavor...)
    is the provisioning center's, checked against its driver's ``ProvisionParams``."""

    model_config = ConfigDict(extra="allow")

    name_template: Annotated[str, StringConstraints(min_length=1, max_length=63)] = (
        "{POOL}-{SEQUENCE:3}"
    )
    sequence_start: int = Field(default=1, ge=0, le=1_000_000_000)
    user_data: Annotated[str, StringConstraints(max_length=65535)] = ""
    metadata: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict
    )
    deletable: bool = True
    start_unavailable: bool = False
    data_volume_gb: int | None = Field(
        default=None,
        ge=1,
        le=16384,
        description="a data volume per user of this size, attached to whichever desktop "
        "of the pool they hold",
    )

    @model_validator(mode="after")
    def _template(self) -> ProvisioningParameters:
        tags.validate_template(self.name_template)
        return self


class Provisioning(Body):
    enabled: bool = False
    center_id: Id | None = Field(
        default=None, description="where to build desktops; default the pool's first center"
    )
    timezone: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="UTC", description="IANA time zone of the schedule windows"
    )
    min_unassigned: int = Field(default=0, ge=0, le=100000)
    max_total: int = Field(default=0, ge=0, le=100000)
    schedules: list[Window] = Field(default_factory=list, max_length=50)
    parameters: ProvisioningParameters = Field(default_factory=ProvisioningParameters)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; use e.g. Europe/Paris") from exc
        return value

    @model_validator(mode="after")
    def _limits(self) -> Provisioning:
        if self.min_unassigned > self.max_total and self.enabled:
            raise ValueError("min_unassigned cannot be larger than max_total")
        for window in self.schedules:
            if window.min_unassigned > window.max_total:
                raise ValueError("a schedule's min_unassigned cannot be larger than its max_total")
        return self


class PoolIn(Body):
    name: Name
    description: Text = ""
    center_ids: list[Id] = Field(default_factory=list, max_length=100)
    filters: list[FilterIn] = Field(default_factory=list, max_length=50)
    desktop_ids: list[Id] = Field(default_factory=list, max_length=10000)
    parent_pool_id: Id | None = None
    provisioning: Provisioning = Field(default_factory=Provisioning)
    tenant_id: Id | None = None


class PoolPatch(Body):
    name: Name | None = None
    description: Text | None = None
    center_ids: list[Id] | None = Field(default=None, max_length=100)
    filters: list[FilterIn] | None = Field(default=None, max_length=50)
    desktop_ids: list[Id] | None = Field(default=None, max_length=10000)
    parent_pool_id: Id | None = None
    provisioning: Provisioning | None = None


class PoolOut(Stamped):
    name: str
    description: str
    center_ids: list[str]
    filters: list[dict[str, Any]]
    desktop_ids: list[str]
    parent_pool_id: str | None
    provisioning: dict[str, Any]
    status: str
    status_message: str
    last_error: str


def _prepare_pool(
    session: Session, ctx: BrokerContext, tenant: str, data: dict[str, Any], existing: Any
) -> dict[str, Any]:
    for cid in data.get("center_ids") or []:
        must_exist(session, Center, cid, tenant, "center")
    provisioning = data.get("provisioning") or {}
    must_exist(session, Center, provisioning.get("center_id"), tenant, "provisioning center")
    ids = data.get("desktop_ids") or []
    if ids:
        found = set(
            session.scalars(
                select(Desktop.id).where(Desktop.id.in_(ids), Desktop.tenant_id == tenant)
            ).all()
        )
        missing = [i for i in ids if i not in found]
        if missing:
            raise InvalidInput(f"desktop {missing[0]} does not exist")
    parent = data.get("parent_pool_id")
    if parent is not None:
        must_exist(session, Pool, parent, tenant, "parent pool")
        if existing is not None:
            parents = dict(
                session.execute(
                    select(Pool.id, Pool.parent_pool_id).where(Pool.tenant_id == tenant)
                ).all()
            )
            if creates_cycle(existing.id, parent, parents):
                raise InvalidInput("a pool cannot be nested inside itself or its own sub-pool")
    if data.get("provisioning") is None:
        data.pop("provisioning", None)
    else:
        _check_center_parameters(session, data, existing)
        if existing is not None:
            # New parameters may cure what made builds fail: try again at once.
            data.update(build_failures=0, builds_resume_at=None)
    return data


def _check_center_parameters(session: Session, data: dict[str, Any], existing: Any) -> None:
    """Validate the center's part of the parameters with the provisioning center's
    driver (the one the engine builds on: the named center, else the pool's first)."""
    provisioning = data["provisioning"]
    parameters = dict(provisioning.get("parameters") or {})
    own = {k: v for k, v in parameters.items() if k in ProvisioningParameters.model_fields}
    theirs = {k: v for k, v in parameters.items() if k not in own}
    center_ids = data["center_ids"] if "center_ids" in data else getattr(existing, "center_ids", [])
    center_id = provisioning.get("center_id") or next(iter(center_ids or []), None)
    center = session.get(Center, center_id) if center_id else None
    if center is None:
        if theirs:
            raise InvalidInput(
                f"provisioning.parameters.{min(theirs)}: a center's parameter, and the pool "
                "has no center; give it one first"
            )
        return
    provisioning["parameters"] = {
        **own,
        **registry.validate_provision_params(center.kind, theirs),
    }


def _pool_after(session: Session, ctx: BrokerContext, pool: Any) -> None:
    refresh_pools(session, pool.tenant_id)
    jobs.poke(session, jobs.JobKind.POOL_PROVISION, pool.id)


def _pool_going(session: Session, pool: Any) -> None:
    """A pool still in use is refused; a deleted pool's unstarted builds are cancelled
    (in the same unit: no task outlives its pool without being told)."""
    _pool_in_use(session, pool)
    pool_service.cancel_builds_of_deleted(
        session, pool_id=pool.id, tenant_id=pool.tenant_id, name=pool.name
    )


def _pool_in_use(session: Session, pool: Any) -> None:
    uses = session.scalars(
        select(PolicyEntry.policy_id).where(
            (PolicyEntry.pool_id == pool.id) | (PolicyEntry.backup_pool_id == pool.id)
        )
    ).all()
    if uses:
        names = session.scalars(select(Policy.name).where(Policy.id.in_(uses))).all()
        raise Conflict(
            f"pool {pool.name} is used by polic{'y' if len(names) == 1 else 'ies'} "
            f"{', '.join(sorted(names))}; remove it from them first"
        )
    child = session.scalars(select(Pool.name).where(Pool.parent_pool_id == pool.id)).first()
    if child is not None:
        raise Conflict(f"pool {pool.name} has the sub-pool {child}; delete or move it first")
    held = session.scalars(
        select(Desktop.name).where(Desktop.assigned_pool_id == pool.id).limit(1)
    ).first()
    if held is not None:
        raise Conflict(
            f"pool {pool.name} still has assigned desktops (e.g. {held}); release them first"
        )


SPEC: ResourceSpec[Any] = ResourceSpec(
    path="pools",
    label="pool",
    model=Pool,
    read=PoolOut,
    create=PoolIn,
    update=PoolPatch,
    filters={"name": str, "parent_pool_id": str},
    prepare=_prepare_pool,
    after_write=_pool_after,
    before_delete=_pool_going,
    reaches_users=True,
)


def pool_status(session: Session, pool: Pool) -> dict[str, Any]:
    """Counts in numbers, and one sentence in words."""
    members = select(PoolMember.desktop_id).where(PoolMember.pool_id == pool.id).subquery()
    rows = session.execute(
        select(
            Desktop.power_state,
            Desktop.availability,
            Desktop.assigned_user_id.is_not(None),
            func.count(),
        )
        .where(Desktop.id.in_(select(members.c.desktop_id)))
        .group_by(Desktop.power_state, Desktop.availability, Desktop.assigned_user_id.is_not(None))
    ).all()
    counts = {
        "total": 0,
        "available": 0,
        "assigned": 0,
        "unavailable": 0,
        "running": 0,
        "stopped": 0,
        "suspended": 0,
        "building": 0,
        "error": 0,
    }
    for power, availability, assigned, n in rows:
        counts["total"] += n
        if assigned:
            counts["assigned"] += n
        if availability != "available":
            counts["unavailable"] += n
        if power in counts:
            counts[power] += n
    waiting = (
        session.scalar(
            select(func.count()).select_from(QueueEntry).where(QueueEntry.pool_id == pool.id)
        )
        or 0
    )
    # "available" is the free desktops a login could be given: the claim's definition.
    counts["available"] = pool_service.free_count(session, pool.id)
    counts["queued"] = int(waiting)
    tasks = dict(
        session.execute(
            select(ProvisioningTask.state, func.count())
            .where(ProvisioningTask.pool_id == pool.id)
            .group_by(ProvisioningTask.state)
        ).all()
    )
    counts["provisioning"] = sum(
        int(tasks.get(s, 0)) for s in ("requested", "creating", "waiting", "addressing")
    )
    counts["failed"] = int(tasks.get("failed", 0))
    counts["in_session"] = int(
        session.scalar(
            select(func.count(func.distinct(SessionRow.desktop_id))).where(
                SessionRow.desktop_id.in_(select(members.c.desktop_id)),
                SessionRow.state.in_([s.value for s in ACTIVE_SESSION_STATES]),
            )
        )
        or 0
    )
    words = (
        f"{counts['total']} desktops: {counts['assigned']} assigned, "
        f"{counts['available']} free, {counts['in_session']} in session, "
        f"{counts['provisioning']} being built, {counts['failed']} failed builds, "
        f"{counts['queued']} users waiting"
    )
    if pool.build_failures:
        n = pool.build_failures
        words += f"; {n} build{'s' * (n != 1)} failed in a row, first: {pool.last_error}"
    elif pool.last_error:
        words += f"; last error: {pool.last_error}"
    quota = tenant_quotas.read(session, pool.tenant_id)
    used = None
    if quota.desktops is not None:
        # The tenant's quota spans its pools: a full tenant explains a pool that stopped.
        used = tenant_quotas.desktops_used(session, pool.tenant_id)
        words += f"; {quota_words(used, quota.desktops, 'desktops')}"
    return {
        "pool_id": pool.id,
        "name": pool.name,
        "counts": counts,
        "summary": words,
        "status": pool.status,
        "provisioning": pool.status_message,
        "last_error": pool.last_error,
        "build_failures": pool.build_failures,
        "builds_resume_at": pool.builds_resume_at,
        "tenant_desktops": {"limit": quota.desktops, "used": used},
    }


def router() -> APIRouter:
    r = APIRouter()
    add_routes(r, SPEC)
    repo: Repository[Pool] = Repository(Pool, "pool")

    @r.get("/pools/{pool_id}/status", tags=["pools"], summary="Pool status in numbers and words")
    def get_pool_status(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        with ctx.db.read() as session:
            return pool_status(session, repo.get(session, pool_id, scope(who)))

    @r.get("/pools/{pool_id}/members", tags=["pools"], summary="Desktops in a pool")
    def get_pool_members(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        with ctx.db.read() as session:
            pool = repo.get(session, pool_id, scope(who))
            rows = session.execute(
                select(Desktop.id, Desktop.name, Desktop.power_state, Desktop.assigned_user_id)
                .join(PoolMember, PoolMember.desktop_id == Desktop.id)
                .where(PoolMember.pool_id == pool.id)
                .order_by(Desktop.name)
            ).all()
        return {
            "pool_id": pool_id,
            "items": [
                {"id": i, "name": n, "power_state": p, "assigned_user_id": u} for i, n, p, u in rows
            ],
        }

    @r.get("/pools/{pool_id}/queue", tags=["pools"], summary="Users waiting for a pool")
    def get_pool_queue(pool_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        with ctx.db.read() as session:
            pool = repo.get(session, pool_id, scope(who))
            rows = session.execute(
                select(QueueEntry.user_id, User.username, QueueEntry.created_at)
                .join(User, User.id == QueueEntry.user_id)
                .where(QueueEntry.pool_id == pool.id)
                .order_by(QueueEntry.ticket)
            ).all()
        return {
            "pool_id": pool_id,
            "items": [
                {"position": n + 1, "user_id": u, "username": name, "since": since.isoformat()}
                for n, (u, name, since) in enumerate(rows)
            ],
        }

    return r
