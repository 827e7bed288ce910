"""Routes of the TOTP second factor: finishing a login, enrolling, removing one's own.

An administrator's reset is a user route: ``DELETE /admin/users/{id}/totp``
(``api/admin/identity.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from deskbroker.api.client.routes import LoginOut, login_out
from deskbroker.api.deps import Principal, SecondFactor, client_address
from deskbroker.api.schemas import Body
from deskbroker.services.second_factor import Enrolment

# A challenge is a compact JWS of a few hundred characters.
ChallengeText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2048),
    Field(description="the challenge of the login's 202 answer"),
]


def _six_digits(value: str) -> str:
    # Apps show the code as "123 456"; people type it so.
    code = value.replace(" ", "")
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise ValueError("a one-time code is the 6 digits your authenticator app shows")
    return code


Code = Annotated[str, StringConstraints(min_length=1, max_length=16), AfterValidator(_six_digits)]


class CodeIn(Body):
    code: Code


class ChallengeIn(Body):
    challenge: ChallengeText


class TotpLoginIn(Body):
    challenge: ChallengeText
    code: Code


class EnrolmentOut(BaseModel):
    """Shown once: add it to an authenticator app (the URI as a QR code, or the secret)."""

    secret: str = Field(description="base32; shown only now, never again")
    uri: str = Field(description="otpauth:// URI for a QR code")
    issuer: str
    account: str
    digits: int
    period_s: int
    message: str


def _enrolment_out(found: Enrolment, next_step: str) -> EnrolmentOut:
    return EnrolmentOut(
        secret=found.secret,
        uri=found.uri,
        issuer=found.issuer,
        account=found.account,
        digits=found.digits,
        period_s=found.period_s,
        message=f"Add this account to your authenticator app, then {next_step}.",
    )


def router() -> APIRouter:
    r = APIRouter()

    @r.post(
        "/auth/login/totp",
        tags=["client"],
        summary="Finish a login with a one-time code",
        description="The challenge of a 202 from POST /api/v1/auth/login and the 6-digit "
        "code of the user's authenticator app; the answer is that of a login.",
    )
    def login_with_code(body: TotpLoginIn, request: Request, service: SecondFactor) -> LoginOut:
        result = service.complete(body.challenge, body.code, client_address(request))
        return login_out(result)

    @r.post(
        "/auth/login/totp/enrol",
        tags=["client"],
        summary="Enrol an authenticator app while logging in",
        description="For a challenge with `enrol: true` (the identity source requires a "
        "second factor and the user has none yet): the secret for the app. Then finish "
        "the login at POST /api/v1/auth/login/totp with its first code.",
    )
    def enrol_at_login(body: ChallengeIn, request: Request, service: SecondFactor) -> EnrolmentOut:
        found = service.enrol_at_login(body.challenge)
        return _enrolment_out(found, "finish logging in with its code")

    @r.post(
        "/me/totp",
        tags=["client"],
        status_code=201,
        summary="Start enrolling an authenticator app",
        description="A new secret, pending until POST /api/v1/me/totp/confirm; starting "
        "again replaces a pending one.",
    )
    def start_enrolment(request: Request, who: Principal, service: SecondFactor) -> EnrolmentOut:
        found = service.start_enrolment(who)
        return _enrolment_out(found, "confirm with its code at POST /api/v1/me/totp/confirm")

    @r.post(
        "/me/totp/confirm",
        tags=["client"],
        status_code=204,
        summary="Confirm the enrolment with a code",
    )
    def confirm(body: CodeIn, request: Request, who: Principal, service: SecondFactor) -> Response:
        service.confirm(who, body.code)
        return Response(status_code=204)

    @r.delete(
        "/me/totp",
        tags=["client"],
        status_code=204,
        summary="Remove your authenticator app, with one of its codes",
    )
    def remove(body: CodeIn, request: Request, who: Principal, service: SecondFactor) -> Response:
        service.remove(who, body.code)
        return Response(status_code=204)

    return r
