"""Builds the five standard routes of one admin resource from a ``ResourceSpec``.

This module deliberately avoids postponed annotations: the route functions are made at
run time and FastAPI must see the real schema classes in their signatures.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from deskbroker.api.admin import standing
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.errors import Forbidden, InvalidInput, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services import access
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store.repository import Repository, bump_config_version
from deskbroker.store.tables import Base, Tenant

M = TypeVar("M", bound=Base)

Prepare = Callable[[Session, BrokerContext, str, dict[str, Any], Any], dict[str, Any]]
After = Callable[[Session, BrokerContext, Any], None]
BeforeDelete = Callable[[Session, Any], None]
ToRead = Callable[[Session, Any], dict[str, Any]]


@dataclass
class ResourceSpec(Generic[M]):
    """One admin resource: its table, its schemas and the hooks that keep it valid."""

    path: str
    label: str
    model: type[M]
    read: type[BaseModel]
    create: type[BaseModel] | None = None
    update: type[BaseModel] | None = None
    filters: dict[str, type] = field(default_factory=dict)
    affects_config: bool = True
    prepare: Prepare | None = None
    after_write: After | None = None
    before_delete: BeforeDelete | None = None
    to_read: ToRead | None = None
    global_only: bool = False
    deletable: bool = True
    # Reaches the users of an assignment rule (a policy, pool, center, plan): the
    # stronger-account rule applies to its changes (standing.check_reach).
    reaches_users: bool = False


class Page(BaseModel):
    """One page of a listing."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


def article(noun: str) -> str:
    """'an' before a vowel sound, as in an identity source, an assignment rule."""
    return "an" if noun[:1].lower() in "aeio" else "a"


def scope(who: TokenClaims) -> str | None:
    """The tenant a principal may see; ``None`` for a global admin."""
    return None if who.role == "global_admin" else who.tenant_id


def target_tenant(session: Session, who: TokenClaims, requested: str | None) -> str:
    """Where a new object goes: the admin's own tenant unless a global admin picks one."""
    if requested is None or requested == who.tenant_id:
        return who.tenant_id
    if who.role != "global_admin":
        raise Forbidden("you can only create objects in your own tenant")
    if session.get(Tenant, requested) is None:
        raise InvalidInput(f"tenant {requested} does not exist")
    return requested


MAX_OFFSET = 1_000_000_000
_OPENAPI_TYPES = {bool: "boolean", int: "integer", str: "string"}


def filter_parameters(filters: dict[str, type]) -> dict[str, Any]:
    """The list filters as OpenAPI query parameters, so clients and the docs see them."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"only items whose {name} equals this",
                "schema": {"type": _OPENAPI_TYPES.get(kind, "string"), "maxLength": 200}
                if kind is str
                else {"type": _OPENAPI_TYPES.get(kind, "string")},
            }
            for name, kind in sorted(filters.items())
        ]
    }


def reject_nulls(model: type[Base], data: dict[str, Any]) -> None:
    """An explicit null for a column that cannot be empty is a mistake, not a reset."""
    columns = model.__table__.columns
    for key, value in data.items():
        if value is None and key in columns and not columns[key].nullable:
            raise InvalidInput(f"{key} cannot be null")


def _parse_filter(name: str, kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise InvalidInput(f"filter {name} must be true or false")
        return raw.lower() in ("true", "1")
    if kind is int:
        try:
            return int(raw)
        except ValueError as exc:
            raise InvalidInput(f"filter {name} must be a whole number") from exc
    if len(raw) > 200:
        raise InvalidInput(f"filter {name} is longer than 200 characters")
    return raw


def add_routes(router: APIRouter, spec: ResourceSpec[Any]) -> None:
    repo: Repository[Any] = Repository(spec.model, spec.label)
    read_model = spec.read

    def render(session: Session, obj: Any) -> dict[str, Any]:
        data = spec.to_read(session, obj) if spec.to_read else obj
        return read_model.model_validate(data, from_attributes=True).model_dump(mode="json")

    def guard(who: TokenClaims) -> None:
        if spec.global_only and who.role != "global_admin":
            raise Forbidden(f"only a global administrator can manage {spec.path}")

    def list_items(
        request: Request,
        ctx: Ctx,
        who: AdminReader,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> Page:
        guard(who)
        chosen: dict[str, Any] = {}
        for key, raw in request.query_params.items():
            if key in ("limit", "offset"):
                continue
            if key not in spec.filters:
                known = ", ".join(sorted(spec.filters)) or "none"
                raise InvalidInput(f"unknown filter {key!r}; filters for {spec.path}: {known}")
            chosen[key] = _parse_filter(key, spec.filters[key], raw)
        with ctx.db.read() as session:
            tenant = None if spec.global_only else scope(who)
            rows, total = repo.list(session, tenant, chosen, limit, offset)
            items = [render(session, r) for r in rows]
        return Page(items=items, total=total, limit=limit, offset=offset)

    def get_item(item_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        guard(who)
        with ctx.db.read() as session:
            return render(
                session, repo.get(session, item_id, None if spec.global_only else scope(who))
            )

    list_items.__name__ = f"list_{spec.path.replace('-', '_')}"
    get_item.__name__ = f"get_{spec.path.replace('-', '_')}"
    tag: list[str | Enum] = [spec.path]
    router.add_api_route(
        f"/{spec.path}",
        list_items,
        methods=["GET"],
        response_model=Page,
        tags=tag,
        summary=f"List {spec.path}",
        description=f"Filters: {', '.join(sorted(spec.filters)) or 'none'}.",
        openapi_extra=filter_parameters(spec.filters),
    )
    router.add_api_route(
        f"/{spec.path}/{{item_id}}",
        get_item,
        methods=["GET"],
        response_model=read_model,
        tags=tag,
        summary=f"Get one {spec.label}",
    )

    def audit(session: Session, who: TokenClaims, action: str, obj: Any) -> None:
        if spec.affects_config:
            bump_config_version(session)
        events.append(
            session,
            f"admin.{action}",
            tenant_id=getattr(obj, "tenant_id", None) or who.tenant_id,
            actor=who.username,
            user_id=who.user_id,
            detail={
                "resource": spec.path,
                "id": getattr(obj, "id", None),
                "name": getattr(obj, "name", None) or getattr(obj, "username", None),
            },
        )

    create_model = spec.create
    if create_model is not None:

        def create_item(
            body: create_model,  # type: ignore[valid-type]
            ctx: Ctx,
            who: AdminWriter,
            response: Response,
        ) -> dict[str, Any]:
            guard(who)
            data = body.model_dump(exclude_unset=False)  # type: ignore[attr-defined]
            with ctx.db.write() as session:
                session.info.update(access.actor_info(ctx, who))
                tenant = (
                    None
                    if spec.global_only
                    else target_tenant(session, who, data.pop("tenant_id", None))
                )
                if spec.prepare:
                    data = spec.prepare(session, ctx, tenant or "", data, None)
                reject_nulls(spec.model, data)
                if tenant is not None:
                    data["tenant_id"] = tenant
                obj = repo.add(session, spec.model(**data))
                if spec.after_write:
                    spec.after_write(session, ctx, obj)
                    repo.flush(session)
                audit(session, who, "create", obj)
                result = render(session, obj)
            response.status_code = 201
            response.headers["Location"] = f"/api/v1/admin/{spec.path}/{result['id']}"
            ctx.cache.invalidate()
            return result

        create_item.__name__ = f"create_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}",
            create_item,
            methods=["POST"],
            response_model=read_model,
            status_code=201,
            tags=tag,
            summary=f"Create {article(spec.label)} {spec.label}",
        )

    update_model = spec.update
    if update_model is not None:

        def update_item(
            item_id: str,
            body: update_model,  # type: ignore[valid-type]
            ctx: Ctx,
            who: AdminWriter,
        ) -> dict[str, Any]:
            guard(who)
            # The fields the body names, each in full: a nested object is replaced whole,
            # with its defaults, exactly as a create would store it.
            named = body.model_fields_set  # type: ignore[attr-defined]
            data = {k: v for k, v in body.model_dump().items() if k in named}  # type: ignore[attr-defined]
            if not data:
                raise InvalidInput("nothing to change: the body names no field")
            with ctx.db.write() as session:
                session.info.update(access.actor_info(ctx, who))
                obj = repo.get(session, item_id, None if spec.global_only else scope(who))
                if spec.reaches_users:
                    standing.check_reach(session, obj, spec.label, "change")
                if spec.prepare:
                    data = spec.prepare(session, ctx, getattr(obj, "tenant_id", ""), data, obj)
                reject_nulls(spec.model, data)
                for key, value in data.items():
                    setattr(obj, key, value)
                repo.flush(session)
                if spec.after_write:
                    spec.after_write(session, ctx, obj)
                    repo.flush(session)
                audit(session, who, "update", obj)
                result = render(session, obj)
            ctx.cache.invalidate()
            return result

        update_item.__name__ = f"update_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}/{{item_id}}",
            update_item,
            methods=["PATCH"],
            response_model=read_model,
            tags=tag,
            summary=f"Change {article(spec.label)} {spec.label}",
        )

    if spec.deletable and (create_model is not None or update_model is not None):

        def delete_item(item_id: str, ctx: Ctx, who: AdminWriter) -> Response:
            guard(who)
            with ctx.db.write() as session:
                session.info.update(access.actor_info(ctx, who))
                obj = repo.get(session, item_id, None if spec.global_only else scope(who))
                if spec.reaches_users:
                    standing.check_reach(session, obj, spec.label, "delete")
                if spec.before_delete:
                    spec.before_delete(session, obj)
                audit(session, who, "delete", obj)
                repo.delete(session, obj)
            ctx.cache.invalidate()
            return Response(status_code=204)

        delete_item.__name__ = f"delete_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}/{{item_id}}",
            delete_item,
            methods=["DELETE"],
            status_code=204,
            tags=tag,
            summary=f"Delete {article(spec.label)} {spec.label}",
        )


def must_exist(
    session: Session, model: type[Base], object_id: str | None, tenant_id: str, label: str
) -> None:
    """Reject a reference to a missing object, or to another tenant's, with one message."""
    if object_id is None:
        return
    obj = session.get(model, object_id)
    if obj is not None and getattr(obj, "tenant_id", tenant_id) != tenant_id:
        if session.info.get("actor_role") == "global_admin":
            # Only a global admin sees both tenants: telling them is no leak.
            raise InvalidInput(
                f"{label} {object_id} belongs to another tenant; an object can only refer "
                "to its own tenant's"
            )
        obj = None
    if obj is None:
        raise InvalidInput(f"{label} {object_id} does not exist")


__all__ = ["NotFound", "Page", "ResourceSpec", "add_routes", "must_exist", "scope"]
