"""Custom roles, API tokens and sign-in lockouts, through the real HTTP API."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from deskbroker.bootstrap import add_local_user
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import ApiToken, Event, LoginThrottle, utcnow
from tests.helpers import USER_PASSWORD, Api


def _as(api: Api, username: str, role: str, tenant: str | None = None) -> Api:
    body: dict[str, Any] = {
        "identity_source_id": api.source_id(),
        "username": username,
        "password": USER_PASSWORD,
        "role": role,
    }
    if tenant:
        body["tenant_id"] = tenant
    api.post("users", body)
    return Api(api.client, api.ctx, api.login(username)["token"])


def _tenant_admin(api: Api) -> tuple[Api, str]:
    tenant = api.post("tenants", {"name": "acme"})
    source = api.post(
        "identity-sources", {"name": "acme-local", "kind": "local", "tenant_id": tenant["id"]}
    )
    api.post(
        "users",
        {
            "identity_source_id": source["id"],
            "username": "acme-admin",
            "password": USER_PASSWORD,
            "role": "tenant_admin",
            "tenant_id": tenant["id"],
        },
    )
    response = api.client.post(
        "/api/v1/auth/login",
        json={"username": "acme-admin", "password": USER_PASSWORD, "tenant": "acme"},
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"]), source["id"]


def test_a_custom_role_allows_exactly_its_grants(api: Api) -> None:
    role = api.post(
        "roles",
        {"name": "pool-operator", "permissions": ["pools:*", "desktops:read", "Centers:Read"]},
    )
    assert role["permissions"] == ["pools:*", "desktops:read", "centers:read"]
    operator = _as(api, "olga", "pool-operator")

    assert operator.post("pools", {"name": "night-shift"})["name"] == "night-shift"
    assert operator.get("desktops")["total"] == 0
    refused = operator.get("users", status=403)["detail"]
    assert refused == "Your role pool-operator does not allow users:read."
    assert (
        "centers:create" in operator.post("centers", {"name": "x", "kind": "static"}, 403)["detail"]
    )
    mine = operator.get("permissions")["mine"]
    assert "pools:delete" in mine and "users:read" not in mine

    # Narrowing the role reaches the holder's very next request.
    api.patch(f"roles/{role['id']}", {"permissions": ["pools:read"]})
    operator.post("pools", {"name": "later"}, status=403)
    assert operator.get("pools")["total"] == 1


def test_roles_are_validated_and_cannot_escalate(api: Api) -> None:
    bad = [
        ({"name": "user", "permissions": ["pools:read"]}, "built-in"),
        ({"name": "Bad Name", "permissions": ["pools:read"]}, "lower-case"),
        ({"name": "x1", "permissions": ["spaceships:read"]}, "unknown resource 'spaceships'"),
        ({"name": "x2", "permissions": ["pools:launch"]}, "unknown action 'launch'"),
        ({"name": "x3", "permissions": ["pools"]}, "is not a permission"),
    ]
    for body, words in bad:
        assert words in api.post("roles", body, status=422)["detail"]

    api.post("roles", {"name": "user-manager", "permissions": ["users:*", "roles:*"]})
    manager = _as(api, "mia", "user-manager")
    add_local_user(api.ctx, "tina", USER_PASSWORD, role="tenant_admin")
    users = {u["username"]: u for u in manager.get("users")["items"]}

    # Not a stronger role for anyone, not a stronger account taken over, not a wider role.
    detail = manager.post(
        "users",
        {
            "identity_source_id": api.source_id(),
            "username": "eve",
            "password": USER_PASSWORD,
            "role": "tenant_admin",
        },
        status=403,
    )["detail"]
    assert detail.startswith("you cannot give a user the role tenant_admin: it allows ")
    manager.patch(f"users/{users['tina']['id']}", {"password": "taken-over-1"}, status=403)
    manager.delete(f"users/{users['tina']['id']}", status=403)
    manager.post("roles", {"name": "wider", "permissions": ["pools:*"]}, status=403)
    assert manager.post("roles", {"name": "narrower", "permissions": ["users:read"]})["name"]
    assert (
        "unknown role 'ghost'"
        in manager.post(
            "users",
            {"identity_source_id": api.source_id(), "username": "gus", "role": "ghost"},
            status=422,
        )["detail"]
    )
    # A role somebody holds cannot be deleted from under them.
    role_id = next(r["id"] for r in api.get("roles")["items"] if r["name"] == "user-manager")
    assert "held by user mia" in api.delete(f"roles/{role_id}", status=409)["detail"]


def test_custom_roles_belong_to_their_tenant(api: Api) -> None:
    acme, source = _tenant_admin(api)
    mine = acme.post("roles", {"name": "viewer", "permissions": ["*:read"]})
    api.post("roles", {"name": "viewer", "permissions": ["pools:read"]})  # default tenant's
    assert [r["id"] for r in acme.get("roles")["items"]] == [mine["id"]]
    default_role = next(r for r in api.get("roles")["items"] if r["tenant_id"] != mine["tenant_id"])
    acme.get(f"roles/{default_role['id']}", status=404)
    acme.patch(f"roles/{default_role['id']}", {"permissions": ["*:*"]}, status=404)
    # A tenant administrator grants its own roles, never the global one.
    acme.post(
        "users",
        {"identity_source_id": source, "username": "vic", "role": "global_admin"},
        status=403,
    )
    assert acme.post("users", {"identity_source_id": source, "username": "vic", "role": "viewer"})


def test_api_tokens_are_scoped_expiring_and_revocable(api: Api, ctx: BrokerContext) -> None:
    api.seed_pool(1)
    made = api.post(
        "api-tokens",
        {
            "name": "nightly report",
            "scopes": ["desktops:read", "sessions:read"],
            "expires_in_days": 7,
        },
    )
    token = made["token"]
    bot = Api(api.client, ctx, token)
    assert bot.get("desktops")["total"] == 1
    assert "do not include users:read" in bot.get("users", status=403)["detail"]
    bot.post("pools", {"name": "nope"}, status=403)
    child = {"name": "child", "scopes": ["desktops:read"], "expires_in_days": 1}
    assert "do not include api-tokens:create" in bot.post("api-tokens", child, 403)["detail"]
    minter = api.post(
        "api-tokens", {"name": "minter", "scopes": ["api-tokens:*"], "expires_in_days": 1}
    )
    minting = Api(api.client, ctx, minter["token"])
    assert "cannot make API tokens" in minting.post("api-tokens", child, 403)["detail"]

    # Listed without the token; the database holds no copy of it either.
    listed = api.get("api-tokens")["items"]
    assert [t["name"] for t in listed] == ["nightly report", "minter"]
    assert all("token" not in t for t in listed)
    with ctx.db.read() as session:
        row = session.get(ApiToken, made["id"])
        assert row is not None and token not in repr(row.__dict__)
        assert row.last_used_at is not None

    # Scopes beyond the maker's own role are refused; so are unknown ones.
    api.post("roles", {"name": "desk", "permissions": ["desktops:read", "api-tokens:*"]})
    desk = _as(api, "hal", "desk")
    wider = {"name": "t", "scopes": ["pools:delete"], "expires_in_days": 1}
    assert "which you may not do yourself" in desk.post("api-tokens", wider, 403)["detail"]
    api.post("api-tokens", {"name": "t", "scopes": ["pools:fly"], "expires_in_days": 1}, 422)
    api.post("api-tokens", {"name": "t", "scopes": ["pools:read"], "expires_in_days": 0}, 422)

    api.delete(f"api-tokens/{made['id']}")
    assert "revoked" in bot.get("desktops", status=401)["detail"]

    second = api.post(
        "api-tokens", {"name": "soon", "scopes": ["desktops:read"], "expires_in_days": 1}
    )
    with ctx.db.write() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == second["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert "expired" in Api(api.client, ctx, second["token"]).get("desktops", 401)["detail"]


def test_an_api_token_follows_its_users_current_role(api: Api) -> None:
    api.post("roles", {"name": "reporter", "permissions": ["desktops:read", "pools:read"]})
    reporter = _as(api, "rita", "reporter")
    token = reporter.post(
        "api-tokens", {"name": "r", "scopes": ["desktops:read"], "expires_in_days": 1}, 403
    )  # the role lacks api-tokens:create
    assert "api-tokens:create" in token["detail"]
    api.post("roles", {"name": "automator", "permissions": ["desktops:read", "api-tokens:*"]})
    user = _as(api, "otto", "automator")
    made = user.post("api-tokens", {"name": "r", "scopes": ["desktops:read"], "expires_in_days": 1})
    bot = Api(api.client, api.ctx, made["token"])
    assert bot.get("desktops")["total"] == 0
    otto = next(u for u in api.get("users")["items"] if u["username"] == "otto")
    api.patch(f"users/{otto['id']}", {"role": "user"})
    bot.get("desktops", status=403)
    api.patch(f"users/{otto['id']}", {"role": "automator", "disabled": True})
    assert "disabled" in bot.get("desktops", status=401)["detail"]


def _login(api: Api, username: str, password: str) -> Any:
    return api.client.post("/api/v1/auth/login", json={"username": username, "password": password})


def test_an_account_locks_after_repeated_failures(api: Api, ctx: BrokerContext) -> None:
    add_local_user(ctx, "lena", USER_PASSWORD)
    add_local_user(ctx, "bob", USER_PASSWORD)
    for attempt in range(4):
        # Every domain spelling of the name counts against the one account.
        name = ("lena", "LENA@corp.example", "CORP\\lena", "lena")[attempt]
        response = _login(api, name, "wrong-password")
        assert response.status_code == 401, response.text
    locked = _login(api, "lena", "wrong-password")
    assert locked.status_code == 429
    assert "locked for 15 minutes" in locked.json()["detail"]
    assert int(locked.headers["Retry-After"]) > 800
    # The right password does not get through a lockout; another account does.
    still = _login(api, "lena", USER_PASSWORD)
    assert still.status_code == 429 and still.json()["reason"] == "account_locked_out"
    assert _login(api, "bob", USER_PASSWORD).status_code == 200

    lena = next(u for u in api.get("users")["items"] if u["username"] == "lena")
    lockouts = api.get("lockouts")["items"]
    assert any(item["subject"] == "lena" and item["locked_until"] for item in lockouts)
    assert api.post(f"users/{lena['id']}/unlock", {}, status=200)["unlocked"] is True
    assert _login(api, "lena", USER_PASSWORD).status_code == 200

    with ctx.db.read() as session:
        reasons = [
            (e.detail or {}).get("reason")
            for e in session.scalars(select(Event).where(Event.kind == "login_failed"))
        ]
    # The fifth failure says it locked; the right password during the lockout is refused.
    assert reasons.count("account_locked_out") == 1
    assert reasons.count("wrong_credentials") == 5


def test_a_password_typed_as_the_name_is_not_kept_by_the_lockout_counter(
    api: Api, ctx: BrokerContext
) -> None:
    """The account counter is keyed by a tag of the name: a password typed into the name
    field shows neither in ``/admin/lockouts`` nor in the table; a user's name does."""
    add_local_user(ctx, "lena", USER_PASSWORD)
    assert _login(api, "Sup3r-Secret-Pw!", "lena").status_code == 401
    assert _login(api, "lena", "wrong-password").status_code == 401
    listed = api.get("lockouts")["items"]
    accounts = [item for item in listed if item["kind"] == "account"]
    assert sorted(item["subject"].startswith("unknown name #") for item in accounts) == [
        False,
        True,
    ]
    assert any(item["subject"] == "lena" for item in accounts)
    with ctx.db.read() as session:
        keys = session.scalars(select(LoginThrottle.key)).all()
    for text in (str(listed), " ".join(keys)):
        assert "Sup3r" not in text and "sup3r" not in text
    # The tag is the audit event's stand-in for the same name.
    with ctx.db.read() as session:
        actors = set(session.scalars(select(Event.actor).where(Event.kind == "login_failed")))
    assert {item["subject"] for item in accounts} == actors


def test_a_good_sign_in_clears_the_count_and_lockouts_expire(api: Api, ctx: BrokerContext) -> None:
    add_local_user(ctx, "sam", USER_PASSWORD)
    for _ in range(4):
        assert _login(api, "sam", "nope-nope").status_code == 401
    assert _login(api, "sam", USER_PASSWORD).status_code == 200
    for _ in range(4):
        assert _login(api, "sam", "nope-nope").status_code == 401  # counted from zero again

    ctx.settings.login_lockout_s = 1
    assert _login(api, "sam", "nope-nope").status_code == 429
    time.sleep(1.1)
    assert _login(api, "sam", USER_PASSWORD).status_code == 200


def test_an_address_is_blocked_across_accounts(api: Api, ctx: BrokerContext) -> None:
    ctx.settings.login_max_failures_per_address = 6
    for n in range(5):
        assert _login(api, f"guess{n}", "x-password").status_code == 401
    blocked = _login(api, "guess5", "x-password")
    assert blocked.status_code == 429
    assert "from your address (testclient)" in blocked.json()["detail"]
    # Even the administrator's right password waits, until a global admin clears it.
    assert _login(api, "admin", "admin-password-1").status_code == 429
    api.delete("lockouts/addresses/testclient")
    assert _login(api, "admin", "admin-password-1").status_code == 200


def test_a_locked_address_does_not_learn_which_tenants_exist(api: Api, ctx: BrokerContext) -> None:
    """Past the address's lockout every sign-in is 429, whatever tenant it names: a 401
    for a made-up tenant told the client which names are real. Guesses at tenant names
    count against the address like any other failure."""
    ctx.settings.login_max_failures_per_address = 4
    for n in range(3):
        guess = api.client.post(
            "/api/v1/auth/login",
            json={"username": "x", "password": "x-password", "tenant": f"made-up-{n}"},
        )
        assert guess.status_code == 401, guess.text
    assert _login(api, "guess", "x-password").status_code == 429  # the fourth failure
    for tenant in ("default", "no-such-tenant"):
        refused = api.client.post(
            "/api/v1/auth/login",
            json={"username": "admin", "password": "admin-password-1", "tenant": tenant},
        )
        assert refused.status_code == 429, (tenant, refused.text)
        assert "from your address (testclient)" in refused.json()["detail"]


def test_admin_changes_are_audited(api: Api, ctx: BrokerContext) -> None:
    pool = api.post("pools", {"name": "audited"})
    api.patch(f"pools/{pool['id']}", {"name": "audited-2"})
    api.delete(f"pools/{pool['id']}")
    with ctx.db.read() as session:
        rows = session.scalars(
            select(Event).where(Event.kind.startswith("admin.")).order_by(Event.id)
        ).all()
        seen = [(e.kind, (e.detail or {}).get("resource"), e.actor) for e in rows]
    assert ("admin.create", "pools", "admin") in seen
    assert ("admin.update", "pools", "admin") in seen
    assert ("admin.delete", "pools", "admin") in seen


def _rule_granting(api: Api, group: str, role: str) -> dict[str, Any]:
    return api.post(
        "assignment-rules",
        {
            "identity_source_id": api.source_id(),
            "name": f"{group} are {role}",
            "conditions": {"group": group},
            "role": role,
        },
    )


def test_a_role_a_rule_grants_cannot_be_reached_around_the_checks(api: Api) -> None:
    rule = _rule_granting(api, "admins", "tenant_admin")
    api.post("roles", {"name": "rule-editor", "permissions": ["assignment-rules:*"]})
    api.post("roles", {"name": "people", "permissions": ["users:*"]})
    editor = _as(api, "ed", "rule-editor")
    people = _as(api, "pat", "people")

    # Loosening the conditions of a rule that grants tenant_admin decides who gets it.
    refused = editor.patch(f"assignment-rules/{rule['id']}", {"conditions": {}}, 403)
    assert "change a rule that grants the role tenant_admin" in refused["detail"]
    # A user put in the group would be tenant_admin at their next login.
    body = {
        "identity_source_id": api.source_id(),
        "username": "mallory",
        "password": USER_PASSWORD,
        "groups": ["admins"],
    }
    assert "whom a rule gives the role tenant_admin" in people.post("users", body, 403)["detail"]
    body["groups"] = ["staff"]
    mallory = people.post("users", body)
    people.patch(f"users/{mallory['id']}", {"groups": ["Admins"]}, status=403)
    # Nor is an account that a rule makes an administrator taken over by a password reset.
    add_local_user(api.ctx, "ada", USER_PASSWORD, groups=["admins"])
    ada = next(u for u in api.get("users")["items"] if u["username"] == "ada")
    detail = people.patch(f"users/{ada['id']}", {"password": "taken-over-1"}, 403)["detail"]
    assert "whose role can be tenant_admin" in detail
    people.post(f"users/{ada['id']}/unlock", {}, status=403)
    assert api.login("ada")["role"] == "tenant_admin"  # the rule does apply


def test_an_administrator_by_a_rule_is_told_a_token_cannot_carry_that_role(api: Api) -> None:
    """A token acts with the account's stored role on every use: one whose administrator
    role comes from a rule at sign-in would mint a token refused on its every call."""
    _rule_granting(api, "admins", "tenant_admin")
    add_local_user(api.ctx, "ada", USER_PASSWORD, groups=["admins"])
    signed = api.login("ada")
    assert signed["role"] == "tenant_admin"
    ada = Api(api.client, api.ctx, signed["token"])
    refused = ada.post(
        "api-tokens", {"name": "ci", "scopes": ["pools:read"], "expires_in_days": 1}, status=403
    )
    assert "acts with your account's own role (user)" in refused["detail"], refused
    assert "comes from an assignment rule" in refused["detail"]
    assert api.get("api-tokens")["total"] == 0
    # Given the role on the account itself, the same request makes a token that works.
    [row] = [u for u in api.get("users")["items"] if u["username"] == "ada"]
    api.patch(f"users/{row['id']}", {"role": "tenant_admin"})
    ada = Api(api.client, api.ctx, api.login("ada")["token"])
    made = ada.post("api-tokens", {"name": "ci", "scopes": ["pools:read"], "expires_in_days": 1})
    answer = api.client.get(
        "/api/v1/admin/pools", headers={"Authorization": f"Bearer {made['token']}"}
    )
    assert answer.status_code == 200, answer.text


def test_a_scoped_token_of_a_global_admin_takes_over_nobody(api: Api) -> None:
    made = api.post("api-tokens", {"name": "users", "scopes": ["users:*"], "expires_in_days": 1})
    bot = Api(api.client, api.ctx, made["token"])
    admin = next(u for u in api.get("users")["items"] if u["username"] == "admin")
    detail = bot.patch(f"users/{admin['id']}", {"password": "taken-over-1"}, 403)["detail"]
    assert "only a global administrator (not an API token)" in detail
    # An API token works on the admin API only: no connecting, no enrolling an app.
    for method, path in (
        ("GET", "/api/v1/client/desktops"),
        ("POST", "/api/v1/me/totp"),
    ):
        response = api.client.request(method, path, headers=bot.headers)
        assert response.status_code == 403, response.text
        assert "works only on the admin API" in response.json()["detail"]


def test_reserved_role_names_and_the_audit_tenant(api: Api, ctx: BrokerContext) -> None:
    for name in ("agent", "api-token"):
        api.post("roles", {"name": name, "permissions": ["pools:read"]}, status=422)
    acme, source = _tenant_admin(api)
    zoe = acme.post("users", {"identity_source_id": source, "username": "zoe"})
    api.post(f"users/{zoe['id']}/unlock", {}, status=200)
    unlocks = acme.get("events?kind=admin.unlock")["items"]
    assert [e["detail"]["name"] for e in unlocks] == ["zoe"]  # in acme's log, not default's


def test_no_spelling_of_a_name_buys_more_guesses(api: Api, ctx: BrokerContext) -> None:
    add_local_user(ctx, "lena", USER_PASSWORD)
    spellings = [
        "lena",
        "LENA",
        "lena@a.example@b.example",
        "CORP\\lena@corp",
        "\uff4c\uff45\uff4e\uff41",
    ]  # fullwidth
    answers = [_login(api, name, "wrong-password").status_code for name in spellings]
    assert answers == [401, 401, 401, 401, 429]


def test_concurrent_guesses_at_one_account_are_counted_one_by_one(
    api: Api, ctx: BrokerContext
) -> None:
    import threading

    add_local_user(ctx, "rita", USER_PASSWORD)
    statuses: list[int] = []
    start = threading.Barrier(10)

    def guess() -> None:
        start.wait()
        statuses.append(_login(api, "rita", "wrong-password").status_code)

    threads = [threading.Thread(target=guess) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Four wrong answers, then the fifth locks; none of the rest had its password tried.
    assert sorted(statuses) == [401] * 4 + [429] * 6


def test_address_keys() -> None:
    from deskbroker.services.throttle import address_key

    assert address_key("10.1.2.3") == "address:10.1.2.3"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:10.1.2.3") == "address:10.1.2.3"
    assert address_key("testclient") == "address:testclient"


def test_the_cli_unlocks_when_every_administrator_is_locked_out(
    api: Api, ctx: BrokerContext, tmp_path: Any
) -> None:
    from typer.testing import CliRunner

    from deskbroker.cli import app as cli_app

    for _ in range(5):
        _login(api, "admin", "not-the-password")
    assert _login(api, "admin", "admin-password-1").status_code == 429
    common = ["--db", ctx.settings.effective_database_url, "--data-dir", str(tmp_path / "cli")]
    # The CLI runs with the broker's configuration: its secret keys the lockout counters.
    broker = {"DESKBROKER_SECRET_KEY": ctx.settings.effective_secret_key}
    result = CliRunner(env=broker).invoke(cli_app, ["user", "unlock", "ADMIN", *common])
    assert result.exit_code == 0, result.output
    assert "ADMIN: unlocked" in result.output
    assert _login(api, "admin", "admin-password-1").status_code == 200
    again = CliRunner().invoke(cli_app, ["user", "unlock", "--address", "testclient", *common])
    assert again.exit_code == 0 and "testclient:" in again.output
