"""Directory setters of webhooks looked up in their directory again: an administrator
whose role comes from an assignment rule over a directory group, and who never signs in
again, stops vouching for their webhook once the directory says they left the group or
are gone, and a directory that does not answer changes nothing.

A real slapd per test (the session's own is shared with other tests, and these change
its entries and stop it); the engine's job is called as the engine calls it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3 import MODIFY_ADD, MODIFY_DELETE
from sqlalchemy import select

from deskbroker.config import Settings
from deskbroker.engine import webhooks as engine_webhooks
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.runner import Engine
from deskbroker.engine.webhooks import Dispatcher
from deskbroker.services.context import BrokerContext
from deskbroker.services.webhook_setters import Recheck, checked_sources, recheck_setters
from deskbroker.store.jobs import JobKind
from deskbroker.store.tables import Job, User, utcnow
from tests import test_webhook_permissions as permissions
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, post_login
from tests.identity.directories import (
    LDAP_BASE,
    LDAP_SERVICE_PASSWORD,
    Slapd,
    running_slapd,
)
from tests.identity.sources import add_ldap_source, ldap_params
from tests.webhook_receiver import Receiver, receiving

SECRET = "receiver-secret-0123456789"
HOOK = {"name": "siem", "url": "http://example.org/h", "kinds": ["login"], "secret": SECRET}
PEOPLE = f"ou=people,{LDAP_BASE}"
ADMINS = f"cn=vdi-admins,ou=groups,{LDAP_BASE}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No waiting on gaps in the event ids: each fan-out takes every event so far."""
    return settings.model_copy(
        update={"webhook_settle_s": 0.0, "webhook_timeout_s": 2.0, "webhook_setter_check_s": 600}
    )


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A directory of this test's own, with a group whose members administer the tenant
    (ann and ben)."""
    with running_slapd(tmp_path / "slapd") as server:
        with server.admin() as c:
            c.add(
                ADMINS,
                ["groupOfNames"],
                {"cn": "vdi-admins", "member": [f"uid=ann,{PEOPLE}", f"uid=ben,{PEOPLE}"]},
            )
        yield server


@pytest.fixture
def directory(api: Api, slapd: Slapd) -> dict[str, Any]:
    """The LDAP source, and the rule making the members of vdi-admins tenant admins."""
    source = add_ldap_source(api, slapd)
    api.post(
        "assignment-rules",
        {
            "identity_source_id": source["id"],
            "name": "directory admins",
            "role": "tenant_admin",
            "conditions": {"group": "vdi-admins"},
        },
    )
    return source


@pytest.fixture
def dispatcher(ctx: BrokerContext) -> Iterator[Dispatcher]:
    """The engine's webhooks job, run by the test: each run fans out every event so far
    (vetting the setters first) and posts the due deliveries."""
    running = Dispatcher(ctx, "recheck-test")
    _fan_out(running)  # the cursor starts at the newest event: history is not sent
    yield running
    running.close(wait=False)


def _recheck(ctx: BrokerContext) -> str:
    """The ``webhook_setters`` job, called as the engine calls it."""
    return engine_webhooks.recheck_setters(ctx, DriverCache(ctx), "", utcnow())


def _sign_in(api: Api, username: str) -> Api:
    """A directory user signed in with their password (their groups stored now)."""
    response = post_login(api, username, f"{username}-password-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "tenant_admin", body
    return Api(api.client, api.ctx, body["token"])


def _user(ctx: BrokerContext, username: str) -> User:
    with ctx.db.read() as session:
        found = session.scalars(select(User).where(User.username == username)).one()
        session.expunge(found)
        return found


def _groups(ctx: BrokerContext, username: str) -> list[str]:
    return list(_user(ctx, username).groups)


def _delivers(api: Api, dispatcher: Dispatcher, receiver: Receiver, hook: dict[str, Any]) -> None:
    permissions._delivers(api, dispatcher, receiver, hook, ("admin", ADMIN_PASSWORD))


def _delivers_nothing(
    api: Api, dispatcher: Dispatcher, receiver: Receiver, hook: dict[str, Any]
) -> None:
    permissions._delivers_nothing(api, dispatcher, receiver, hook, ("admin", ADMIN_PASSWORD))


_fan_out = permissions._fan_out
_switched_off = permissions._switched_off


def test_an_administrator_removed_from_the_group_stops_vouching_after_the_recheck(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any], dispatcher: Dispatcher
) -> None:
    ann = _sign_in(api, "ann")
    with receiving(SECRET) as receiver:
        hook = ann.post("webhooks", {**HOOK, "url": receiver.url})
        _delivers(api, dispatcher, receiver, hook)

        with slapd.admin() as c:
            c.modify(ADMINS, {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
        # The hole: ann never signs in again, and her row still holds the group.
        _delivers(api, dispatcher, receiver, hook)
        assert "vdi-admins" in _groups(ctx, "ann")

        outcome = _recheck(ctx)
        assert outcome.startswith(
            "1 webhook setters and API token holders looked up: 1 changed, 0 gone"
        ), outcome
        assert "vdi-admins" not in _groups(ctx, "ann")
        # What the sign-in stores beside the groups is refreshed as well.
        row = _user(ctx, "ann")
        assert (row.display_name, row.email) == ("Ann Archer", "ann@example.org")
        assert row.attributes == {"departmentNumber": "R&D"}
        assert row.disabled is False and row.role == "user"

        _delivers_nothing(api, dispatcher, receiver, hook)
        assert api.get(f"webhooks/{hook['id']}")["enabled"] is False
        (event,) = _switched_off(api, hook)
        assert event["detail"]["reason"] == (
            "its setter ann may no longer read events (role user does not allow events:read)"
        )
        assert receiver.bad_signatures == 0


def test_a_setter_still_in_the_group_keeps_vouching(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any], dispatcher: Dispatcher
) -> None:
    ann = _sign_in(api, "ann")
    with receiving(SECRET) as receiver:
        hook = ann.post("webhooks", {**HOOK, "url": receiver.url})
        with slapd.admin() as c:  # another group of hers changes: the row follows
            c.modify(
                f"cn=devs,ou=groups,{LDAP_BASE}",
                {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]},
            )
        before = _user(ctx, "ann").updated_at
        assert "devs" in _groups(ctx, "ann")
        assert _recheck(ctx).startswith(
            "1 webhook setters and API token holders looked up: 1 changed"
        )
        assert "devs" not in _groups(ctx, "ann") and "vdi-admins" in _groups(ctx, "ann")
        # Nothing changed this time, but the row says when it was last looked at.
        assert _recheck(ctx).startswith(
            "1 webhook setters and API token holders looked up: 0 changed, 0 gone"
        )
        assert _user(ctx, "ann").updated_at > before
        _delivers(api, dispatcher, receiver, hook)
        assert not _switched_off(api, hook)


def test_a_setter_deleted_from_the_directory_has_their_webhooks_switched_off(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any], dispatcher: Dispatcher
) -> None:
    ann = _sign_in(api, "ann")
    ann_id = _user(ctx, "ann").id
    with receiving(SECRET) as receiver:
        hooks = [
            ann.post("webhooks", {**HOOK, "name": name, "url": receiver.url})
            for name in ("siem", "audit")
        ]
        _delivers(api, dispatcher, receiver, hooks[0])
        with slapd.admin() as c:
            c.modify(ADMINS, {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
            c.delete(f"uid=ann,{PEOPLE}")

        report = recheck_setters(ctx)
        assert report == Recheck(looked_up=1, gone=1, switched_off=2)
        for hook in hooks:
            assert api.get(f"webhooks/{hook['id']}")["enabled"] is False
            (event,) = _switched_off(api, hook)
            assert event["detail"]["reason"] == (
                "its setter ann is no longer in the directory (identity source example)"
            )
            assert event["detail"]["set_by_user_id"] == event["user_id"] == ann_id
            assert event["actor"] == "engine"
            _delivers_nothing(api, dispatcher, receiver, hook)
        # The user row is an administrator's to disable or delete: it stays as it was.
        row = _user(ctx, "ann")
        assert row.id == ann_id and row.disabled is False and "vdi-admins" in row.groups
        # Not a setter of an enabled webhook any more: not looked up again.
        assert recheck_setters(ctx) == Recheck()
        assert len(_switched_off(api, hooks[0])) == 1


def test_a_token_holder_deleted_from_the_directory_has_their_api_tokens_revoked(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any]
) -> None:
    """A token acts with the account's stored role: one given an administrator's role and
    then deleted from the directory (no webhook of theirs) would keep automation running
    as an administrator until the token expires."""
    _sign_in(api, "ann")
    ann_id = _user(ctx, "ann").id
    api.patch(f"users/{ann_id}", {"role": "tenant_admin"})
    ann = _sign_in(api, "ann")
    token = ann.post("api-tokens", {"name": "ci", "scopes": ["pools:read"], "expires_in_days": 5})
    bearer = {"Authorization": f"Bearer {token['token']}"}
    assert api.client.get("/api/v1/admin/pools", headers=bearer).status_code == 200

    # Still in the directory: looked up, and the token stands.
    assert recheck_setters(ctx) == Recheck(looked_up=1)
    assert api.client.get("/api/v1/admin/pools", headers=bearer).status_code == 200

    with slapd.admin() as c:
        c.modify(ADMINS, {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
        c.delete(f"uid=ann,{PEOPLE}")
    assert recheck_setters(ctx) == Recheck(looked_up=1, gone=1, revoked=1)
    refused = api.client.get("/api/v1/admin/pools", headers=bearer)
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["detail"]
    [event] = [
        e
        for e in api.get("events?kind=admin.delete")["items"]
        if e["detail"].get("id") == token["id"]
    ]
    assert event["actor"] == "engine" and event["user_id"] == ann_id
    assert event["detail"]["reason"] == (
        "its user ann is no longer in the directory (identity source example)"
    )
    # Nothing live left of theirs: not looked up again.
    assert recheck_setters(ctx) == Recheck()


def test_a_directory_that_does_not_answer_changes_nothing(
    api: Api,
    ctx: BrokerContext,
    slapd: Slapd,
    directory: dict[str, Any],
    dispatcher: Dispatcher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ann = _sign_in(api, "ann")
    with receiving(SECRET) as receiver:
        hook = ann.post("webhooks", {**HOOK, "url": receiver.url})
        with slapd.admin() as c:
            c.modify(ADMINS, {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
        groups = _groups(ctx, "ann")
        slapd.stop()
        try:
            with caplog.at_level(logging.WARNING, logger="deskbroker"):
                report = recheck_setters(ctx)
            assert report == Recheck(unanswered=1)
            assert _groups(ctx, "ann") == groups
            _delivers(api, dispatcher, receiver, hook)
            assert not _switched_off(api, hook)
            warned = [r.getMessage() for r in caplog.records if "looked up again" in r.getMessage()]
            assert warned and "identity source example" in warned[0], caplog.text
            assert LDAP_SERVICE_PASSWORD not in caplog.text
        finally:
            slapd.start()
        # The next period asks again, and the directory's answer counts then.
        assert recheck_setters(ctx) == Recheck(looked_up=1, changed=1)
        _delivers_nothing(api, dispatcher, receiver, hook)
        assert len(_switched_off(api, hook)) == 1


def test_a_directory_whose_search_fails_changes_nothing(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any], dispatcher: Dispatcher
) -> None:
    """A search the directory does not complete (here its base is gone from under it) is
    no answer: it must not read as "no such user"."""
    ann = _sign_in(api, "ann")
    with receiving(SECRET) as receiver:
        hook = ann.post("webhooks", {**HOOK, "url": receiver.url})
        params = ldap_params(slapd, base_dn=f"ou=nowhere,{LDAP_BASE}")
        api.patch(f"identity-sources/{directory['id']}", {"params": params})
        assert recheck_setters(ctx) == Recheck(unanswered=1)
        _delivers(api, dispatcher, receiver, hook)
        assert not _switched_off(api, hook)
        assert "vdi-admins" in _groups(ctx, "ann")


def test_a_local_setter_is_not_looked_up(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any], dispatcher: Dispatcher
) -> None:
    """A local user's row is the truth itself: a role from a rule over their stored
    groups is vetted on the row, and nothing asks any source about them."""
    api.post(
        "assignment-rules",
        {
            "identity_source_id": api.source_id(),
            "name": "local admins",
            "role": "tenant_admin",
            "conditions": {"group": "admins"},
        },
    )
    api.post(
        "users",
        {
            "identity_source_id": api.source_id(),
            "username": "dora",
            "password": USER_PASSWORD,
            "groups": ["admins"],
        },
    )
    dora = Api(api.client, api.ctx, api.login("dora")["token"])
    ann = _sign_in(api, "ann")
    assert set(checked_sources(ctx)) == {directory["id"]}
    with receiving(SECRET) as receiver:
        local_hook = dora.post("webhooks", {**HOOK, "name": "local", "url": receiver.url})
        ann.post("webhooks", {**HOOK, "url": receiver.url})
        before = _user(ctx, "dora").updated_at
        # Only ann is looked up; dora's row is not touched.
        assert recheck_setters(ctx) == Recheck(looked_up=1)
        assert _user(ctx, "dora").updated_at == before
        _delivers(api, dispatcher, receiver, local_hook)


def test_each_run_is_bounded_and_takes_the_least_recently_refreshed_first(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any]
) -> None:
    ann = _sign_in(api, "ann")
    ann.post("webhooks", {**HOOK, "name": "ann's"})
    ben = _sign_in(api, "ben")
    ben.post("webhooks", {**HOOK, "name": "ben's"})
    with slapd.admin() as c:
        c.modify(ADMINS, {"member": [(MODIFY_ADD, [f"uid=resetty,{PEOPLE}"])]})
        c.modify(
            ADMINS,
            {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}", f"uid=ben,{PEOPLE}"])]},
        )
    # ann signed in first, so her row is the older: she goes first, then ben.
    assert recheck_setters(ctx, limit=1) == Recheck(looked_up=1, changed=1)
    assert "vdi-admins" not in _groups(ctx, "ann") and "vdi-admins" in _groups(ctx, "ben")
    assert recheck_setters(ctx, limit=1) == Recheck(looked_up=1, changed=1)
    assert "vdi-admins" not in _groups(ctx, "ben")
    # Then ann again: each run takes whoever waited longest.
    stamps = {name: _user(ctx, name).updated_at for name in ("ann", "ben")}
    assert recheck_setters(ctx, limit=1) == Recheck(looked_up=1)
    assert _user(ctx, "ann").updated_at > stamps["ann"]
    assert _user(ctx, "ben").updated_at == stamps["ben"]


def test_the_engine_runs_the_recheck_as_a_job_of_the_cluster(
    api: Api, ctx: BrokerContext, slapd: Slapd, directory: dict[str, Any]
) -> None:
    ann = _sign_in(api, "ann")
    ann.post("webhooks", HOOK)
    with slapd.admin() as c:
        c.modify(ADMINS, {"member": [(MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
    engine = Engine(ctx, workers=4)
    try:
        assert engine.handlers[JobKind.WEBHOOK_SETTERS.value] is engine_webhooks.recheck_setters
        engine.recover()
        engine.run_once()  # makes the cluster's jobs, due at once, and runs them
    finally:
        engine.stop()
    with ctx.db.read() as session:
        (job,) = session.scalars(select(Job).where(Job.kind == JobKind.WEBHOOK_SETTERS.value))
    assert job.target_id == "" and job.interval_s == ctx.settings.webhook_setter_check_s == 600
    assert job.runs == 1 and job.failures == 0 and job.last_error == "", job.last_error
    assert job.lease_owner is None
    # Next due a period after this run.
    assert (job.next_run_at - job.last_run_at).total_seconds() == pytest.approx(600, abs=1)
    assert "vdi-admins" not in _groups(ctx, "ann")
