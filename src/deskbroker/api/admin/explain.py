"""POST /admin/explain: what a user would get, and which rule decided."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from deskbroker.api.deps import AdminReader, Ctx
from deskbroker.api.schemas import Body, Name, Username
from deskbroker.errors import Forbidden, NotFound
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.services.explain import (
    ExplainService,
    Explanation,
    parse_client,
    parse_moment,
)

Short = Annotated[str, StringConstraints(max_length=64, strip_whitespace=True)]


class ExplainIn(Body):
    username: Username
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="tenant name (default: your own)"
    )
    source: Name | None = Field(
        default=None, description="identity source name, as the login form's selector"
    )
    client_address: Short | None = Field(default=None, description="e.g. 10.1.2.3")
    at: Short | None = Field(
        default=None,
        description="HH:MM (today) or an ISO date and time; default now",
        examples=["08:00", "2026-11-28T08:00:00+01:00"],
    )
    timezone: Short = Field(default="UTC", description="IANA zone for `at` without an offset")


class CheckOut(BaseModel):
    condition: str
    ok: bool
    words: str


class RuleOut(BaseModel):
    id: str
    name: str
    matched: bool
    deciding: bool
    reason: str
    checks: list[CheckOut]
    policy_id: str | None
    policy_name: str | None
    role: str


class SourceStepOut(BaseModel):
    id: str
    name: str
    kind: str
    why: str
    outcome: str
    detail: str


class IdentityOut(BaseModel):
    username: str
    display_name: str
    email: str
    groups: list[str]
    attributes: dict[str, str]
    ou: str


class UserOut(BaseModel):
    id: str
    role: str
    disabled: bool


class OfferOut(BaseModel):
    pool_id: str
    pool_name: str
    desktops: int
    assignment: str
    ordering: str
    free: int
    backup_pool_id: str | None
    backup_pool_name: str | None
    backup_free: int | None
    holds: list[str]
    outcome: str


class PolicyOut(BaseModel):
    id: str
    name: str
    max_desktops_per_user: int


class ExplainOut(BaseModel):
    username: str
    tenant_id: str
    tenant_name: str
    at: str
    client_address: str | None
    source: SourceStepOut
    sources_tried: list[SourceStepOut]
    identity: IdentityOut
    user: UserOut | None = Field(description="the broker's user; null before a first login")
    rules: list[RuleOut]
    deciding_rule: RuleOut | None
    policy: PolicyOut | None
    role: str
    refused: str | None
    offers: list[OfferOut]
    summary: str


def _tenant(ctx: BrokerContext, who: TokenClaims, name: str | None) -> str:
    if name is None:
        return who.tenant_id
    view = ctx.cache.current(ctx.db, fresh=True)
    tenant_id = view.tenants_by_name.get(name)
    if who.role != "global_admin" and tenant_id != who.tenant_id:
        raise Forbidden("you can only explain users of your own tenant")
    if tenant_id is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return tenant_id


def render(result: Explanation) -> dict[str, Any]:
    """The explanation as the API answers it (the CLI prints the same)."""
    rules = [
        {
            "id": v.rule.rule_id,
            "name": v.rule.name,
            "matched": v.matched,
            "deciding": v.rule is result.deciding,
            "reason": v.reason,
            "checks": [{"condition": c.condition, "ok": c.ok, "words": c.words} for c in v.checks],
            "policy_id": v.rule.policy_id,
            "policy_name": result.policy_names.get(v.rule.policy_id or ""),
            "role": v.rule.role,
        }
        for v in result.verdicts
    ]
    steps = [
        {
            "id": s.source.id,
            "name": s.source.name,
            "kind": s.source.kind,
            "why": s.why,
            "outcome": s.outcome,
            "detail": s.detail,
        }
        for s in result.tried
    ]
    who = result.identity
    return {
        "username": result.username,
        "tenant_id": result.tenant_id,
        "tenant_name": result.tenant_name,
        "at": result.at.isoformat(),
        "client_address": result.client_address,
        "source": steps[-1],
        "sources_tried": steps,
        "identity": {
            "username": who.username,
            "display_name": who.display_name,
            "email": who.email,
            "groups": sorted(who.groups),
            "attributes": dict(who.attributes),
            "ou": who.ou,
        },
        "user": None
        if result.user is None
        else {"id": result.user.id, "role": result.user.role, "disabled": result.user.disabled},
        "rules": rules,
        "deciding_rule": next((r for r in rules if r["deciding"]), None),
        "policy": None
        if result.policy is None
        else {
            "id": result.policy.id,
            "name": result.policy.name,
            "max_desktops_per_user": result.policy.max_desktops_per_user,
        },
        "role": result.role,
        "refused": result.refused,
        "offers": [
            {
                "pool_id": o.pool_id,
                "pool_name": o.pool_name,
                "desktops": o.desktops,
                "assignment": o.assignment,
                "ordering": o.ordering,
                "free": o.free,
                "backup_pool_id": o.backup_pool_id,
                "backup_pool_name": o.backup_pool_name,
                "backup_free": o.backup_free,
                "holds": list(o.holds),
                "outcome": o.outcome,
            }
            for o in result.offers
        ],
        "summary": result.summary,
    }


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/explain",
        tags=["explain"],
        response_model=ExplainOut,
        # A POST only because the question has a body: it reads, and writes nothing.
        openapi_extra={"x-permission": "explain:read"},
        summary="What a user would get from an address at a moment, and which rule decided",
        description=(
            "Follows the login path without a password: the identity source that would take "
            "the user, the identity as it describes them, every assignment rule in order with "
            "the reason it matched or not, the deciding rule, its policy and role, and what "
            "each pool of the policy would hand out now. Claims and writes nothing. A "
            "directory that cannot be reached is a 503."
        ),
    )
    def explain(body: ExplainIn, ctx: Ctx, who: AdminReader) -> dict[str, Any]:
        # Plain ``def``: a directory lookup blocks, so this runs in the thread pool.
        moment = parse_moment(body.at, body.timezone)
        client = parse_client(body.client_address)
        tenant_id = _tenant(ctx, who, body.tenant)
        result = ExplainService(ctx).explain(
            body.username,
            tenant_id=tenant_id,
            source=body.source,
            client_address=client,
            at=moment,
        )
        return render(result)

    return r
