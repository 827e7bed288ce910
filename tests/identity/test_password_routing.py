"""A password goes only to the source that owns the account, and nobody below an account
may change the source or rules it signs in through (issue 9, "harvesting").

The harvesting directory is a real slapd behind a 127.0.0.1 proxy that records every byte
the broker sends it: an LDAP simple bind carries the password in clear, so the record
shows whether a password reached the directory.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest
from sqlalchemy import func, select

from deskbroker.bootstrap import add_local_user
from deskbroker.store.tables import Event, User
from tests.helpers import ADMIN_PASSWORD, USER_PASSWORD, Api, post_login
from tests.identity.directories import LDAP_SERVICE_PASSWORD, Slapd
from tests.identity.sources import add_source, ldap_params


class RecordingProxy:
    """A TCP relay to ``target`` on 127.0.0.1 that keeps what clients sent."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> RecordingProxy:
        self._spawn(self._accept)
        return self

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._spawn(self._pipe, client, upstream, True)
            self._spawn(self._pipe, upstream, client, False)

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += chunk
                sink.sendall(chunk)
        except OSError:
            pass  # the other direction closed first
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def saw(self, secret: str) -> bool:
        with self._lock:
            return secret.encode() in self.sent

    def stop(self) -> None:
        self._stopping = True
        self._server.close()


@pytest.fixture
def harvester(slapd: Slapd) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(slapd.port).start()
    yield proxy
    proxy.stop()


def _tenant_admin(api: Api) -> Api:
    """A tenant admin of the tenant that holds the global admin (the default tenant)."""
    add_local_user(api.ctx, "tad", USER_PASSWORD, role="tenant_admin")
    return Api(api.client, api.ctx, api.login("tad")["token"])


def _harvesting_source(tad: Api, slapd: Slapd, proxy: RecordingProxy) -> dict[str, Any]:
    """An LDAP source at position 0, no domain: in front of every other source."""
    params = {**ldap_params(slapd), "servers": [f"ldap://127.0.0.1:{proxy.port}"]}
    return add_source(tad, "harvest", "ldap", params, position=0, password=LDAP_SERVICE_PASSWORD)


def test_the_global_admins_password_never_reaches_a_source_in_front_of_theirs(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    tad = _tenant_admin(api)
    harvest = _harvesting_source(tad, slapd, harvester)
    local = api.source_id()
    assert harvest["position"] == 0 and harvest["id"] != local

    response = post_login(api, "admin", ADMIN_PASSWORD)
    assert response.status_code == 200, response.text
    # A wrong password, and the name in another case, stay home too.
    assert post_login(api, "admin", "typo-" + ADMIN_PASSWORD).status_code == 401
    assert post_login(api, "ADMIN", ADMIN_PASSWORD).status_code == 401
    assert not harvester.saw(ADMIN_PASSWORD)
    assert not harvester.saw("typo-" + ADMIN_PASSWORD)

    # In a tenant that holds a global admin, a name nobody holds goes to no directory
    # unless its domain or the selector routes it there: the admin's typo stays home.
    assert post_login(api, "admni", "typo2-" + ADMIN_PASSWORD).status_code == 401
    assert not harvester.saw("typo2-" + ADMIN_PASSWORD)
    assert post_login(api, "ann", "ann-password-1").status_code == 401
    assert not harvester.saw("ann-password-1")
    # The directory does take the passwords of its users who choose it: the proxy records.
    ann = post_login(api, "ann", "ann-password-1", source="harvest")
    assert ann.status_code == 200, ann.text
    assert harvester.saw("ann-password-1")

    # Explain shows the same choice: the local source, and why no other was asked.
    answer = api.client.post(
        "/api/v1/admin/explain", json={"username": "admin"}, headers=api.headers
    ).json()
    assert [s["name"] for s in answer["sources_tried"]] == ["local"]
    assert "no other source is sent the password" in answer["source"]["why"]


def test_a_bare_name_held_by_two_sources_asks_which(api: Api) -> None:
    """Two domains with a ``jdoe`` each: neither is sent the other's password."""
    one = api.post("identity-sources", {"name": "one", "kind": "local", "domain": "one.example"})
    two = api.post("identity-sources", {"name": "two", "kind": "local", "domain": "two.example"})
    for source, password in ((one, "one-password-1"), (two, "two-password-1")):
        api.post(
            "users",
            {"identity_source_id": source["id"], "username": "jdoe", "password": password},
        )
    refused = post_login(api, "jdoe", "one-password-1")
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == (
        "'jdoe' is the name of accounts in more than one identity source (one, two): sign in "
        "with your domain (name@domain) or choose your source"
    )
    assert post_login(api, "jdoe@two.example", "two-password-1").status_code == 200
    assert post_login(api, "jdoe", "one-password-1", source="one").status_code == 200
    explained = api.client.post(
        "/api/v1/admin/explain", json={"username": "jdoe"}, headers=api.headers
    )
    assert explained.status_code == 400 and "more than one" in explained.json()["detail"]


def test_a_tenant_admin_cannot_take_over_the_global_admins_source_or_rules(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    local = api.source_id()
    api.patch(f"identity-sources/{local}", {"second_factor": "optional"})
    tad = _tenant_admin(api)
    only_global = "only a global administrator can"
    # Not the second factor, the servers, the switch or the order of the admins' source.
    for change in (
        {"second_factor": "off"},
        {"enabled": False},
        {"position": 50},
        {"domain": "evil.example"},
    ):
        detail = tad.patch(f"identity-sources/{local}", change, status=403)["detail"]
        assert detail == (
            f"{only_global} change identity source local: accounts of role global_admin sign "
            "in through it"
        )
    assert api.get(f"identity-sources/{local}")["second_factor"] == "optional"
    assert only_global in tad.delete(f"identity-sources/{local}", status=403)["detail"]
    # Not a rule the global admin signs in through (it picks their desktops) ...
    policy = api.post("policies", {"name": "watched", "entries": []})
    catch_all = {"identity_source_id": local, "name": "all", "policy_id": policy["id"]}
    detail = tad.post("assignment-rules", catch_all, status=403)["detail"]
    assert detail == (
        f"{only_global} make this rule: admin, whose role is global_admin, signs in through it"
    )
    made = api.post("assignment-rules", catch_all)
    assert (
        only_global in tad.patch(f"assignment-rules/{made['id']}", {"position": 3}, 403)["detail"]
    )
    assert only_global in tad.delete(f"assignment-rules/{made['id']}", status=403)["detail"]
    # ... nor a second account of the admin's name, which would make the name ambiguous.
    harvest = _harvesting_source(tad, slapd, harvester)
    twin = {"identity_source_id": harvest["id"], "username": "Admin"}
    assert only_global in tad.post("users", twin, status=403)["detail"]
    # A rule that does not reach the admin, and the tenant admin's own source, are theirs.
    students = {**catch_all, "name": "students", "conditions": {"group": "students"}}
    assert tad.post("assignment-rules", students)["name"] == "students"
    assert tad.patch(f"identity-sources/{harvest['id']}", {"position": 7})["position"] == 7
    # The global admin, above everyone, still changes their own source.
    assert api.patch(f"identity-sources/{local}", {"second_factor": "required"})


def test_a_name_whose_source_is_disabled_goes_nowhere(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    legacy = api.post("identity-sources", {"name": "legacy", "kind": "local", "position": 5})
    api.post(
        "users",
        {"identity_source_id": legacy["id"], "username": "dina", "password": "dina-password-1"},
    )
    _harvesting_source(api, slapd, harvester)
    assert post_login(api, "dina", "dina-password-1").status_code == 200
    api.patch(f"identity-sources/{legacy['id']}", {"enabled": False})

    refused = post_login(api, "dina", "dina-password-1")
    assert refused.status_code == 401, refused.text
    assert not harvester.saw("dina-password-1")
    explained = api.client.post(
        "/api/v1/admin/explain", json={"username": "dina"}, headers=api.headers
    )
    assert explained.status_code == 404
    assert "belongs to a disabled identity source" in explained.json()["detail"]


def test_a_whole_name_with_an_at_goes_to_its_own_source_before_any_domain(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    """A local ``alice@example.org``: a directory given the domain example.org by a
    tenant admin is not sent her password."""
    add_local_user(api.ctx, "alice@example.org", "alice-secret-9", role="global_admin")
    tad = _tenant_admin(api)
    params = {**ldap_params(slapd), "servers": [f"ldap://127.0.0.1:{harvester.port}"]}
    add_source(tad, "corp", "ldap", params, domain="example.org", password=LDAP_SERVICE_PASSWORD)
    answer = post_login(api, "alice@example.org", "alice-secret-9")
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == "alice@example.org"
    assert post_login(api, "alice@example.org", "alice-typo-9").status_code == 401
    assert not harvester.saw("alice-secret-9") and not harvester.saw("alice-typo-9")
    # The domain still routes the directory's own users.
    assert post_login(api, "ann@example.org", "ann-password-1").status_code == 200
    assert harvester.saw("ann-password-1")


def test_a_directory_sign_in_makes_no_twin_of_another_sources_account(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    """A global admin ``ben`` of the local source; a tenant admin's directory also has a
    ``ben`` whose password they know. Signing in there by selector makes no second
    ``ben``, so the global admin's plain ``ben`` still goes home (and only home)."""
    add_local_user(api.ctx, "ben", "ben-global-secret", role="global_admin")
    tad = _tenant_admin(api)
    _harvesting_source(tad, slapd, harvester)
    for typed in ("ben", "BEN"):
        twin = post_login(api, typed, "ben-password-1", source="harvest")
        assert twin.status_code == 401, twin.text
        assert twin.json()["detail"] == "Wrong username or password."
    with api.ctx.db.read() as session:
        bens = session.scalars(select(User.role).where(func.lower(User.username) == "ben")).all()
        reasons = [
            e.detail.get("reason")
            for e in session.scalars(select(Event).where(Event.kind == "login_failed"))
        ]
    assert bens == ["global_admin"]
    assert reasons.count("name_held_by_another_source") == 2
    answer = post_login(api, "ben", "ben-global-secret")
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == "global_admin"
    assert not harvester.saw("ben-global-secret")


def test_a_tenant_admin_cannot_steer_a_global_admins_desktops(api: Api) -> None:
    """Neither by assigning the global admin a desktop (its address is where their client
    connects), nor by editing the policy, pool or center their rule reaches."""
    ids = api.seed_pool(3, users=1)  # a catch-all rule of the local source: admin too
    tad = _tenant_admin(api)  # whose sign-in took a desktop of the pool
    users = {u["username"]: u["id"] for u in api.get("users")["items"]}
    taken = {a["desktop_id"] for a in api.get("assignments")["items"]}
    desktops = [d["id"] for d in api.get("desktops")["items"] if d["id"] not in taken]
    to_admin = {"desktop_id": desktops[0], "user_id": users["admin"]}
    assert tad.post("assignments", to_admin, status=403)["detail"] == (
        "only a global administrator can assign a desktop to admin, who can be global administrator"
    )
    assert api.get(f"assignments?user_id={users['admin']}")["total"] == 0
    # An ordinary user is the tenant admin's to serve.
    to_user = {"desktop_id": desktops[1], "user_id": users["user0"]}
    assert tad.post("assignments", to_user)["user_id"] == users["user0"]

    reached = (
        ("policies", ids["policy"], "policy lab-policy", {"description": "x"}),
        ("pools", ids["pool"], "pool lab", {"description": "x"}),
        ("centers", ids["center"], "center lab-center", {"scan_interval_s": 300}),
    )
    for path, item, named, change in reached:
        detail = tad.patch(f"{path}/{item}", change, status=403)["detail"]
        assert detail == (
            f"only a global administrator can change {named}: admin, whose role is "
            "global_admin, gets desktops through it"
        ), detail
        assert (
            "only a global administrator can delete"
            in (tad.delete(f"{path}/{item}", status=403)["detail"])
        )
    # A pool no stronger account reaches is the tenant admin's.
    own = tad.post("pools", {"name": "tads"})
    assert tad.patch(f"pools/{own['id']}", {"description": "mine"})["description"] == "mine"
    # The global admin, above everyone, still edits them.
    assert api.patch(f"pools/{ids['pool']}", {"description": "ok"})["description"] == "ok"


def test_a_directory_a_tenant_admin_last_changed_is_sent_no_unknown_name(
    api: Api, slapd: Slapd, harvester: RecordingProxy
) -> None:
    """A directory the global admin set up takes unknown bare names; once a tenant admin
    has changed it (its servers, say), it takes them only by domain or selector."""
    params = {**ldap_params(slapd), "servers": [f"ldap://127.0.0.1:{harvester.port}"]}
    corp = add_source(api, "corp", "ldap", params, password=LDAP_SERVICE_PASSWORD)
    assert corp["set_by_global_admin"] is True
    assert post_login(api, "ann", "ann-password-1").status_code == 200
    tad = _tenant_admin(api)
    changed = tad.patch(f"identity-sources/{corp['id']}", {"position": 0})
    assert changed["set_by_global_admin"] is False
    assert post_login(api, "ben", "ben-password-1").status_code == 401
    assert post_login(api, "admni", "typo3-" + ADMIN_PASSWORD).status_code == 401
    assert not harvester.saw("ben-password-1") and not harvester.saw("typo3-")
    # Known names still go to their own source; the rest choose it.
    assert post_login(api, "ann", "ann-password-1").status_code == 200
    assert post_login(api, "ben", "ben-password-1", source="corp").status_code == 200
