"""The sign-in services of one broker process, built together once.

A password login, an OpenID Connect sign-in and a second-factor completion all end in
the same ``LoginService`` (one user upsert, one refusal path), so the three are built
around one instance; the API hands them to its routes as FastAPI dependencies
(``api/deps.py``: ``Login``, ``Oidc``, ``SecondFactor``).
"""

from __future__ import annotations

from dataclasses import dataclass

from deskbroker.services.context import BrokerContext
from deskbroker.services.login import LoginService
from deskbroker.services.oidc_signin import OidcSignIn
from deskbroker.services.second_factor import SecondFactorService


@dataclass(frozen=True)
class SignInServices:
    login: LoginService
    oidc: OidcSignIn
    second_factor: SecondFactorService

    @classmethod
    def build(cls, ctx: BrokerContext) -> SignInServices:
        login = LoginService(ctx)
        return cls(
            login=login,
            oidc=OidcSignIn(ctx, login),
            second_factor=SecondFactorService(ctx, login),
        )
