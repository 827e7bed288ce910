"""The login page's choices: the domain selector and the organisation sign-in buttons."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, StringConstraints

from deskbroker.api.deps import Ctx
from deskbroker.services import sign_in_choices


class SignInChoiceOut(BaseModel):
    name: str
    domain: str
    kind: Literal["password", "redirect"]


class SignInChoicesOut(BaseModel):
    sources: list[SignInChoiceOut]


def router() -> APIRouter:
    r = APIRouter()

    @r.get(
        "/auth/sources",
        tags=["client"],
        summary="The sign-in choices of a login page",
        description="The tenant's enabled identity sources in order: a `password` source "
        "goes in the `source` field of POST /api/v1/auth/login (the domain selector), a "
        "`redirect` source signs in at GET /api/v1/auth/oidc/{source}/start. What any "
        "login page shows anyone: names and domains only. An unknown tenant has none.",
    )
    def sign_in_sources(
        ctx: Ctx,
        tenant: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Query(
            None, description="the tenant's name (default: the default tenant)"
        ),
    ) -> SignInChoicesOut:
        found = sign_in_choices.choices(ctx, tenant)
        return SignInChoicesOut(
            sources=[SignInChoiceOut(name=c.name, domain=c.domain, kind=c.kind) for c in found]
        )

    return r
