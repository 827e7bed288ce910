"""Builds the five standard routes of one admin resource from a ``ResourceSpec``.

The routes parse and shape; what they do to the catalog is ``services.catalog_crud``'s.
This module deliberately avoids postponed annotations: the route functions are made at
run time and FastAPI must see the real schema classes in their signatures.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from deskbroker.api.admin import standing
from deskbroker.api.deps import AdminReader, AdminWriter, Ctx
from deskbroker.errors import InvalidInput, NotFound
from deskbroker.services.catalog_crud import Catalog, Resource, must_exist, scope

M = TypeVar("M")


@dataclass(frozen=True)
class ResourceSpec(Generic[M]):
    """One admin resource: its path, its schemas and filters, and the catalog resource
    (table and hooks, in ``services``) the routes work on; a router names no table."""

    path: str
    read: type[BaseModel]
    resource: Resource[M]
    create: type[BaseModel] | None = None
    update: type[BaseModel] | None = None
    filters: dict[str, type] = field(default_factory=dict)
    deletable: bool = True

    @property
    def catalog(self) -> Resource[M]:
        return self.resource


class Page(BaseModel):
    """One page of a listing."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


def article(noun: str) -> str:
    """'an' before a vowel sound, as in an identity source, an assignment rule."""
    return "an" if noun[:1].lower() in "aeio" else "a"


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
    """Add the list and get routes of ``spec``, and create, update and delete as far as
    it has the schemas for them."""
    catalog: Catalog[Any] = Catalog(spec.catalog, spec.path, standing.check_reach)
    read_model = spec.read
    label = spec.catalog.label

    def render(data: Any) -> dict[str, Any]:
        return read_model.model_validate(data, from_attributes=True).model_dump(mode="json")

    def list_items(
        request: Request,
        ctx: Ctx,
        who: AdminReader,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> Page:
        catalog.guard(who)
        chosen: dict[str, Any] = {}
        for key, raw in request.query_params.items():
            if key in ("limit", "offset"):
                continue
            if key not in spec.filters:
                known = ", ".join(sorted(spec.filters)) or "none"
                raise InvalidInput(f"unknown filter {key!r}; filters for {spec.path}: {known}")
            chosen[key] = _parse_filter(key, spec.filters[key], raw)
        items, total = catalog.list(ctx, who, chosen, limit, offset, render)
        return Page(items=items, total=total, limit=limit, offset=offset)

    def get_item(item_id: str, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        return catalog.get(ctx, who, item_id, render)

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
        summary=f"Get one {label}",
    )

    create_model = spec.create
    if create_model is not None:

        def create_item(
            body: create_model,  # type: ignore[valid-type]
            ctx: Ctx,
            who: AdminWriter,
            response: Response,
        ) -> dict[str, Any]:
            catalog.guard(who)
            data = body.model_dump(exclude_unset=False)  # type: ignore[attr-defined]
            result = catalog.create(ctx, who, data, render)
            response.status_code = 201
            response.headers["Location"] = f"/api/v1/admin/{spec.path}/{result['id']}"
            return result

        create_item.__name__ = f"create_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}",
            create_item,
            methods=["POST"],
            response_model=read_model,
            status_code=201,
            tags=tag,
            summary=f"Create {article(label)} {label}",
        )

    update_model = spec.update
    if update_model is not None:

        def update_item(
            item_id: str,
            body: update_model,  # type: ignore[valid-type]
            ctx: Ctx,
            who: AdminWriter,
        ) -> dict[str, Any]:
            catalog.guard(who)
            # The fields the body names, each in full: a nested object is replaced whole,
            # with its defaults, exactly as a create would store it.
            named = body.model_fields_set  # type: ignore[attr-defined]
            data = {k: v for k, v in body.model_dump().items() if k in named}  # type: ignore[attr-defined]
            if not data:
                raise InvalidInput("nothing to change: the body names no field")
            return catalog.update(ctx, who, item_id, data, render)

        update_item.__name__ = f"update_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}/{{item_id}}",
            update_item,
            methods=["PATCH"],
            response_model=read_model,
            tags=tag,
            summary=f"Change {article(label)} {label}",
        )

    if spec.deletable and (create_model is not None or update_model is not None):

        def delete_item(item_id: str, ctx: Ctx, who: AdminWriter) -> Response:
            catalog.delete(ctx, who, item_id)
            return Response(status_code=204)

        delete_item.__name__ = f"delete_{spec.path.replace('-', '_')}"
        router.add_api_route(
            f"/{spec.path}/{{item_id}}",
            delete_item,
            methods=["DELETE"],
            status_code=204,
            tags=tag,
            summary=f"Delete {article(label)} {label}",
        )


__all__ = ["MAX_OFFSET", "NotFound", "Page", "ResourceSpec", "add_routes", "must_exist", "scope"]
