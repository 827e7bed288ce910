"""The answer of a password login that waits for its second factor."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deskbroker.domain.second_factor import SecondFactorStep
from deskbroker.services.challenges import Challenge


class SecondFactorOut(BaseModel):
    """The password was right; a one-time code (or, first, an enrolment) completes it."""

    status: Literal["second_factor_needed"] = "second_factor_needed"
    challenge: str = Field(
        description="give it back to POST /api/v1/auth/login/totp with the code; it is "
        "no bearer token"
    )
    expires_at: int
    enrol: bool = Field(
        description="true: enrol an authenticator app first, through "
        "POST /api/v1/auth/login/totp/enrol with the challenge"
    )
    user_id: str
    username: str
    message: str


def challenge_answer(challenge: Challenge) -> JSONResponse:
    """202: accepted, not complete: the client has one more step to take."""
    enrol = challenge.step is SecondFactorStep.ENROL
    message = (
        "Your account needs a second factor: add an authenticator app with "
        "POST /api/v1/auth/login/totp/enrol, then give its code."
        if enrol
        else "Give the one-time code your authenticator app shows."
    )
    body = SecondFactorOut(
        challenge=challenge.token,
        expires_at=challenge.expires_at,
        enrol=enrol,
        user_id=challenge.user_id,
        username=challenge.username,
        message=message,
    )
    return JSONResponse(body.model_dump(), status_code=202)
