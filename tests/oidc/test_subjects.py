"""Which broker user an OpenID sign-in is: the provider's issuer + ``sub``, never a name
or an unverified e-mail address; and unauthenticated sign-in starts throttled per address."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import Event, User
from tests.helpers import Api
from tests.oidc.flows import add_oidc_source, finish, provider_callback, start
from tests.oidc.provider import ACCOUNTS, OidcProvider


def sign_in(api: Api, account: str) -> dict[str, Any]:
    response = finish(api, provider_callback(api, account, ACCOUNTS[account]["password"]))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def users(ctx: BrokerContext) -> list[tuple[str, str | None, str | None]]:
    """Every user of an OpenID source: name, issuer and subject."""
    with ctx.db.read() as session:
        rows = session.execute(
            select(User.username, User.oidc_issuer, User.oidc_subject)
            .where(User.username != "admin")
            .order_by(User.username)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def test_another_subject_with_the_same_name_is_refused(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    ann = sign_in(api, "ann")
    assert users(ctx) == [("ann", oidc_provider.issuer, "ann")]

    # ann2 is another account at the provider whose preferred_username is also "ann".
    taken = finish(api, provider_callback(api, "ann2", ACCOUNTS["ann2"]["password"]))
    assert taken.status_code == 403, taken.text
    assert taken.json()["detail"] == (
        "the broker user 'ann' of this identity source belongs to another account at the "
        "identity provider (another subject), so this account cannot sign in as it; ask "
        "your administrator"
    )
    with ctx.db.read() as session:
        failed = session.scalars(
            select(Event).where(Event.kind == "login_failed").order_by(Event.id.desc())
        ).first()
        ann_row = session.scalars(select(User).where(User.username == "ann")).one()
    assert failed is not None and failed.detail["reason"] == "subject_mismatch"
    assert ann_row.id == ann["user_id"] and ann_row.display_name == "Ann Archer"
    assert users(ctx) == [("ann", oidc_provider.issuer, "ann")]


def test_a_bound_user_is_matched_by_subject_not_by_name(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    source = add_oidc_source(api, oidc_provider)
    first = sign_in(api, "ann")
    # The operator now names users by another claim: ann's sub still finds her row.
    api.patch(
        f"identity-sources/{source['id']}",
        {"params": {**source["params"], "username_claim": "name"}},
    )
    again = sign_in(api, "ann")
    assert again["user_id"] == first["user_id"] and again["username"] == "ann"
    # A first sign-in under the new claim takes that claim's name.
    carl = sign_in(api, "carl")
    assert carl["username"] == "Carl Cole"


def test_a_user_made_by_an_administrator_is_bound_at_the_first_sign_in(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    source = add_oidc_source(api, oidc_provider)
    made = api.post(
        "users", {"identity_source_id": source["id"], "username": "carl", "role": "helpdesk"}
    )
    carl = sign_in(api, "carl")
    assert carl["user_id"] == made["id"] and carl["role"] == "helpdesk"
    with ctx.db.read() as session:
        row = session.get(User, made["id"])
        assert row is not None and (row.oidc_issuer, row.oidc_subject) == (
            oidc_provider.issuer,
            "carl",
        )
        # Carl's provider has not verified his address: the broker does not keep it.
        assert row.email == ""


def test_an_email_names_a_user_only_when_verified_and_allowed(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    refused = api.post(
        "identity-sources",
        {
            "name": "mail",
            "kind": "oidc",
            "params": {
                "issuer": oidc_provider.issuer,
                "client_id": "deskbroker",
                "username_claim": "email",
            },
        },
        status=422,
    )
    assert "set trust_verified_email to true" in refused["detail"], refused

    add_oidc_source(api, oidc_provider, username_claim="email", trust_verified_email=True)
    assert sign_in(api, "nina")["username"] == "nina@example.org"  # verified at the provider
    unverified = finish(api, provider_callback(api, "carl", ACCOUNTS["carl"]["password"]))
    assert unverified.status_code == 403, unverified.text
    assert "has not verified this user's e-mail address" in unverified.json()["detail"]
    with ctx.db.read() as session:
        assert session.scalars(select(User).where(User.username.like("carl%"))).first() is None


def test_sign_in_starts_are_throttled_per_address(
    api: Api, ctx: BrokerContext, oidc_provider: OidcProvider
) -> None:
    add_oidc_source(api, oidc_provider)
    ctx.settings.oidc_starts_per_address = 3
    assert [start(api).status_code for _ in range(2)] == [302, 302]
    device = api.client.post("/api/v1/auth/oidc/corp/device", json={})
    assert device.status_code == 200, device.text  # the third start, of either kind

    refused = start(api)
    assert refused.status_code == 429, refused.text
    wait = int(refused.headers["Retry-After"])
    assert 0 < wait <= ctx.settings.oidc_start_window_s
    assert refused.json()["detail"] == (
        "Too many sign-ins were started from your address (testclient): wait "
        f"{wait} seconds before starting another."
    )
    assert refused.json()["title"] == "Too many sign-ins started"
    assert "Location" not in refused.headers
    device = api.client.post("/api/v1/auth/oidc/corp/device", json={})
    assert device.status_code == 429 and "Retry-After" in device.headers
    # Other addresses start as before.
    with TestClient(api.client.app, client=("192.0.2.7", 40000)) as elsewhere:
        assert start(Api(elsewhere, ctx, api.token)).status_code == 302
