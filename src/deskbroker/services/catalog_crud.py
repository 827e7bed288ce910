"""Create, read, update and delete for the admin catalog (tenants, centers, pools,
plans, policies, ...): one use case per operation, each in its own unit of work.

A ``Resource`` names a table and the hooks that keep its rows valid (checks before a
write, what follows one, what refuses a delete, how a row is read back); ``Catalog``
runs the five operations on it. The HTTP routes (``api.admin.crud``) parse and hand in
a ``render`` that shapes a row into the answer inside the unit, so what is read back is
exactly what was written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from deskbroker.errors import Forbidden, InvalidInput
from deskbroker.security import TokenClaims
from deskbroker.services import write_context
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, membership
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.db import Unit
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Tenant

M = TypeVar("M")

# The hooks a resource may have; each runs inside the operation's unit of work.
Prepare = Callable[[Unit, BrokerContext, str, dict[str, Any], Any], dict[str, Any]]
After = Callable[[Unit, BrokerContext, Any], None]
BeforeDelete = Callable[[Unit, Any], None]
ToRead = Callable[[Unit, Any], dict[str, Any]]
# The stronger-account rule for what reaches an assignment rule's users: (unit, row,
# label, "change" | "delete"); raises Forbidden.
ReachCheck = Callable[[Unit, Any, str, str], None]
# Shapes a row (or what ``to_read`` made of it) into the answer's dictionary.
Render = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Resource(Generic[M]):
    """One table of the catalog and the hooks that keep it valid."""

    model: type[M]
    label: str
    affects_config: bool = True
    prepare: Prepare | None = None
    after_write: After | None = None
    before_delete: BeforeDelete | None = None
    to_read: ToRead | None = None
    global_only: bool = False
    # Reaches the users of an assignment rule (a policy, pool, center, plan): the
    # stronger-account rule applies to its changes.
    reaches_users: bool = False
    # Its writes may refresh pool membership (a pool, center or desktop; a policy, rule
    # or user when a guarded pool's offer changes): the tenant's membership is held
    # first (``store/membership.hold`` says why first).
    holds_membership: bool = False


def scope(who: TokenClaims) -> str | None:
    """The tenant a principal may see; ``None`` for a global admin."""
    return None if who.role == "global_admin" else who.tenant_id


def target_tenant(session: Unit, who: TokenClaims, requested: str | None) -> str:
    """Where a new object goes: the admin's own tenant unless a global admin picks one."""
    if requested is None or requested == who.tenant_id:
        return who.tenant_id
    if who.role != "global_admin":
        raise Forbidden("you can only create objects in your own tenant")
    if session.get(Tenant, requested) is None:
        raise InvalidInput(f"tenant {requested} does not exist")
    return requested


def reject_nulls(model: type[Any], data: dict[str, Any]) -> None:
    """An explicit null for a column that cannot be empty is a mistake, not a reset."""
    columns = model.__table__.columns
    for key, value in data.items():
        if value is None and key in columns and not columns[key].nullable:
            raise InvalidInput(f"{key} cannot be null")


def must_exist(
    session: Unit, model: type[Any], object_id: str | None, tenant_id: str, label: str
) -> None:
    """Reject a reference to a missing object, or to another tenant's, with one message."""
    if object_id is None:
        return
    obj = session.get(model, object_id)
    if obj is not None and getattr(obj, "tenant_id", tenant_id) != tenant_id:
        actor = write_context.actor_if_any(session)
        if actor is not None and actor.is_global_admin:
            # Only a global admin sees both tenants: telling them is no leak.
            raise InvalidInput(
                f"{label} {object_id} belongs to another tenant; an object can only refer "
                "to its own tenant's"
            )
        obj = None
    if obj is None:
        raise InvalidInput(f"{label} {object_id} does not exist")


def _config_tenant(obj: Any) -> str | None:
    """The tenant whose configuration a change of ``obj`` changed: a tenant's own row is
    that tenant's; a row of no tenant may be anyone's (None: every cache reloads whole)."""
    if isinstance(obj, Tenant):
        return obj.id
    tenant_id = getattr(obj, "tenant_id", None)
    return tenant_id if isinstance(tenant_id, str) else None


class Catalog(Generic[M]):
    """The five operations on one resource, named ``name`` in messages and the audit log
    (the admin API's path: ``pools``, ``protocol-plans``)."""

    def __init__(self, resource: Resource[M], name: str, reach: ReachCheck | None) -> None:
        self.resource = resource
        self.name = name
        self._reach = reach if resource.reaches_users else None
        self._repo: Repository[Any] = Repository(resource.model, resource.label)

    def guard(self, who: TokenClaims) -> str | None:
        """Refuses a tenant admin a global resource; the tenant the principal may see."""
        if self.resource.global_only:
            if who.role != "global_admin":
                raise Forbidden(f"only a global administrator can manage {self.name}")
            return None
        return scope(who)

    def _render(self, session: Unit, obj: Any, render: Render) -> dict[str, Any]:
        to_read = self.resource.to_read
        return render(to_read(session, obj) if to_read else obj)

    def _event_tenant(self, who: TokenClaims, obj: Any) -> str | None:
        """The tenant whose log records a change: the row's own. A global resource (a
        tenant, a job, a node) is the platform's: its events go into no tenant's log, so
        only global admins see them, never the admins, webhooks or stream of whichever
        tenant the global admin happens to sign in to."""
        if self.resource.global_only:
            return None
        return getattr(obj, "tenant_id", None) or who.tenant_id

    def _audit(self, session: Unit, who: TokenClaims, action: str, obj: Any) -> None:
        if self.resource.affects_config:
            bump_config_version(session, _config_tenant(obj))
        events.append(
            session,
            f"admin.{action}",
            tenant_id=self._event_tenant(who, obj),
            actor=who.username,
            user_id=who.user_id,
            detail={
                "resource": self.name,
                "id": getattr(obj, "id", None),
                "name": getattr(obj, "name", None) or getattr(obj, "username", None),
            },
        )

    def list(
        self,
        ctx: BrokerContext,
        who: TokenClaims,
        filters: Mapping[str, Any],
        limit: int,
        offset: int,
        render: Render,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the rows the principal may see, and how many there are."""
        tenant = self.guard(who)
        with ctx.db.read() as session:
            rows, total = self._repo.list(session, tenant, filters, limit, offset)
            return [self._render(session, r, render) for r in rows], total

    def get(
        self, ctx: BrokerContext, who: TokenClaims, item_id: str, render: Render
    ) -> dict[str, Any]:
        """One row the principal may see (else NotFound)."""
        tenant = self.guard(who)
        with ctx.db.read() as session:
            return self._render(session, self._repo.get(session, item_id, tenant), render)

    def create(
        self, ctx: BrokerContext, who: TokenClaims, data: dict[str, Any], render: Render
    ) -> dict[str, Any]:
        """A new row in the principal's tenant (or the one a global admin names in
        ``tenant_id``), checked by the resource's hooks and audited."""
        self.guard(who)
        with ctx.db.write() as session:
            write_context.attach_actor(session, ctx, who)
            tenant = (
                None
                if self.resource.global_only
                else target_tenant(session, who, data.pop("tenant_id", None))
            )
            obj = self.create_in(session, ctx, who, tenant, data)
            result = self._render(session, obj, render)
        ctx.cache.stale(ctx.db)
        return result

    def create_in(
        self,
        session: Unit,
        ctx: BrokerContext,
        who: TokenClaims,
        tenant: str | None,
        data: dict[str, Any],
    ) -> Any:
        """``create`` inside the caller's unit (whose ``session.info`` carries the actor):
        a new row in ``tenant``, checked by the resource's hooks and audited."""
        resource = self.resource
        if resource.holds_membership and tenant is not None:
            membership.hold(session, tenant)
        if resource.prepare:
            data = resource.prepare(session, ctx, tenant or "", data, None)
        reject_nulls(resource.model, data)
        if tenant is not None:
            data["tenant_id"] = tenant
        obj = self._repo.add(session, resource.model(**data))
        if resource.after_write:
            resource.after_write(session, ctx, obj)
            self._repo.flush(session)
        self._audit(session, who, "create", obj)
        return obj

    def update(
        self,
        ctx: BrokerContext,
        who: TokenClaims,
        item_id: str,
        data: dict[str, Any],
        render: Render,
    ) -> dict[str, Any]:
        """Change the fields ``data`` names, each in full, checked and audited."""
        tenant = self.guard(who)
        with ctx.db.write() as session:
            write_context.attach_actor(session, ctx, who)
            obj = self._repo.get(session, item_id, tenant)
            self.update_in(session, ctx, who, obj, data)
            result = self._render(session, obj, render)
        ctx.cache.stale(ctx.db)
        return result

    def update_in(
        self, session: Unit, ctx: BrokerContext, who: TokenClaims, obj: Any, data: dict[str, Any]
    ) -> None:
        """``update`` of a row already read, inside the caller's unit."""
        resource = self.resource
        if resource.holds_membership:
            membership.hold(session, obj.tenant_id)
        if self._reach is not None:
            self._reach(session, obj, resource.label, "change")
        if resource.prepare:
            data = resource.prepare(session, ctx, getattr(obj, "tenant_id", ""), data, obj)
        reject_nulls(resource.model, data)
        for key, value in data.items():
            setattr(obj, key, value)
        self._repo.flush(session)
        if resource.after_write:
            resource.after_write(session, ctx, obj)
            self._repo.flush(session)
        self._audit(session, who, "update", obj)

    def delete(self, ctx: BrokerContext, who: TokenClaims, item_id: str) -> None:
        """Delete a row nothing still needs (the resource's ``before_delete`` says)."""
        tenant = self.guard(who)
        with ctx.db.write() as session:
            write_context.attach_actor(session, ctx, who)
            obj = self._repo.get(session, item_id, tenant)
            self.delete_in(session, who, obj)
        ctx.cache.stale(ctx.db)

    def delete_in(self, session: Unit, who: TokenClaims, obj: Any) -> None:
        """``delete`` of a row already read, inside the caller's unit."""
        if self.resource.holds_membership:
            membership.hold(session, obj.tenant_id)
        if self._reach is not None:
            self._reach(session, obj, self.resource.label, "delete")
        if self.resource.before_delete:
            self.resource.before_delete(session, obj)
        self._audit(session, who, "delete", obj)
        self._repo.delete(session, obj)


def audit_event(
    session: Unit,
    who: TokenClaims,
    kind: str,
    *,
    tenant_id: str | None,
    desktop_id: str | None = None,
    detail: dict[str, Any],
) -> None:
    """One admin event in the caller's unit (an action that is not one of the five)."""
    events.append(
        session,
        kind,
        tenant_id=tenant_id,
        actor=who.username,
        user_id=who.user_id,
        desktop_id=desktop_id,
        detail=detail,
    )
