"""NIS through the real HTTP API against a real ypserv: groups to policy, refusals,
failover, the portmapper, and what an unknown name costs."""

from __future__ import annotations

import json
import socket
import statistics
import time
from pathlib import Path

from deskbroker.identity.base import Credentials, source_kinds
from deskbroker.identity.nis import ACCOUNT_EXPIRED, LOCKED, PASSWORD_EXPIRED
from deskbroker.identity.nis_servers import NOT_SERVED, SHADOW_DENIED, UNREACHABLE
from deskbroker.security import PasswordHashing
from deskbroker.services.context import BrokerContext
from deskbroker.services.login import WRONG_CREDENTIALS, LoginService
from tests.helpers import Api, counting, post_login
from tests.identity.directories import free_port
from tests.identity.nis_server import NisSite, running_nis, unix_relay
from tests.identity.nis_users import (
    LOGIN_DOMAIN,
    add_nis_source,
    nis_groups,
    nis_params,
    nis_users,
)
from tests.identity.sources import group_policy
from tests.identity.unprivileged import staged


def test_nis_groups_pick_the_policy(api: Api, nis: NisSite) -> None:
    source = add_nis_source(api, nis)
    assert not source["has_secrets"]
    devs = group_policy(api, source["id"], "devs")
    printers = group_policy(api, source["id"], "printers", tag="p-")

    # ann: a yescrypt hash in passwd.byname; devs by membership, staff by her primary gid.
    response = post_login(api, "ann", "ann-password-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(o["status"], o["pool_id"]) for o in body["offers"]] == [("assigned", devs["pool"])]
    user = api.get(f"users?username=ann&identity_source_id={source['id']}")["items"][0]
    assert user["id"] == body["user_id"]
    assert user["display_name"] == "Ann Archer"
    assert sorted(user["groups"]) == ["devs", "staff"]
    assert user["attributes"] == {
        "uid": "2001",
        "gid": "100",
        "home": "/home/ann",
        "shell": "/bin/bash",
        "gecos": "Ann Archer,Room 1,,",
    }
    assert not user["has_password"]

    # cid: Debian's default layout, "x" in passwd and a sha512-crypt hash in shadow.byname,
    # which ypserv gives only to a privileged source port; primary group ops.
    cid = post_login(api, f"cid@{LOGIN_DOMAIN}", "cid-password-1")
    assert cid.status_code == 200, cid.text
    assert [o["pool_id"] for o in cid.json()["offers"]] == [printers["pool"]]
    cid_user = api.get(f"users?username=cid&identity_source_id={source['id']}")["items"][0]
    assert sorted(cid_user["groups"]) == ["ops", "printers"]

    # ben (md5-crypt) is in printers too: the pool's second desktop.
    ben = post_login(api, "ben", "ben-password-1", source="campus")
    assert ben.status_code == 200, ben.text
    assert [o["status"] for o in ben.json()["offers"]] == ["assigned"]

    # The same user again: the same desktop, found by the login-form domain too.
    again = post_login(api, f"ann@{LOGIN_DOMAIN}", "ann-password-1")
    assert again.json()["user_id"] == body["user_id"]
    assert again.json()["offers"][0]["desktop"]["id"] == body["offers"][0]["desktop"]["id"]


def test_nis_refusals_are_clear_and_write_only_the_audit_event(api: Api, nis: NisSite) -> None:
    add_nis_source(api, nis)
    dead = f"127.0.0.1:{free_port()}"
    add_nis_source(api, nis, name="down", login_domain="down.example", servers=[dead])
    # A live ypserv that does not serve the source's NIS domain.
    add_nis_source(
        api, nis, name="elsewhere", login_domain="elsewhere.example", domain="not-served.test"
    )
    cases = {
        ("ann@nis.example", "not-her-password"): (401, WRONG_CREDENTIALS, "wrong_credentials"),
        ("nobody@nis.example", "whatever-1"): (401, WRONG_CREDENTIALS, "wrong_credentials"),
        ("locky@nis.example", "not-his-password"): (401, WRONG_CREDENTIALS, "wrong_credentials"),
        ("locky@nis.example", "locky-password-1"): (403, LOCKED, "locked"),
        ("daemon@nis.example", "anything-1"): (403, LOCKED, "locked"),
        ("oldie@nis.example", "oldie-password-1"): (403, PASSWORD_EXPIRED, "password_expired"),
        ("gone@nis.example", "gone-password-1"): (403, ACCOUNT_EXPIRED, "account_expired"),
        ("ann@down.example", "ann-password-1"): (503, UNREACHABLE, "unreachable"),
        ("ann@elsewhere.example", "ann-password-1"): (503, NOT_SERVED, "not_served"),
    }
    users_before = api.get("users")["total"]
    for (username, password), (status, message, _) in cases.items():
        response = post_login(api, username, password)
        assert response.status_code == status, (username, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == message
    assert api.get("users")["total"] == users_before
    assert api.get("assignments")["total"] == 0
    failed = api.get("events?kind=login_failed&limit=100")["items"]
    kept = [(e["actor"], e["detail"]["reason"]) for e in failed]
    expected = [(username, reason) for (username, _), (_, _, reason) in cases.items()]
    # A refusal by the directory names an account: kept as typed. Otherwise the name is
    # no broker user's and is kept only as a tag (it may have been a password).
    silent = ("wrong_credentials", "unreachable", "not_served")
    tagged = sorted(r for a, r in kept if a.startswith("unknown name #"))
    assert tagged == sorted(r for _, r in expected if r in silent)
    named = sorted(k for k in kept if not k[0].startswith("unknown name #"))
    assert named == sorted(k for k in expected if k[1] not in silent)


def test_failover_from_a_dead_server_to_a_live_one(api: Api, nis: NisSite) -> None:
    dead = f"127.0.0.1:{free_port()}"
    source = add_nis_source(api, nis, servers=[dead, nis.server])
    group_policy(api, source["id"], "devs")
    for _ in range(2):
        response = post_login(api, "ann", "ann-password-1")
        assert response.status_code == 200, response.text
        assert response.json()["offers"][0]["status"] == "assigned"


def test_a_server_that_stops_is_reported_unreachable(
    api: Api, nis: NisSite, tmp_path: Path
) -> None:
    with running_nis(tmp_path / "doomed", nis_users(), nis_groups()) as doomed:
        add_nis_source(api, nis, name="doomed", servers=[doomed.server])
        assert post_login(api, "ben", "ben-password-1").status_code == 200
    users = api.get("users")["total"]
    response = post_login(api, "ben", "ben-password-1")
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == UNREACHABLE
    assert api.get("users")["total"] == users


def test_a_server_that_hangs_is_given_up_on_and_then_skipped(api: Api, nis: NisSite) -> None:
    # Accepts connections (the kernel's backlog) but never answers a call.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        servers = [f"127.0.0.1:{hung.getsockname()[1]}", nis.server]
        add_nis_source(api, nis, servers=servers, timeout_s=0.5)
        elapsed = []
        for _ in range(2):
            started = time.perf_counter()
            response = post_login(api, "ben", "ben-password-1")
            elapsed.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    # The first login waited out the timeout; the second skipped the server it remembers.
    assert elapsed[0] >= 0.5 and elapsed[1] < 0.5, elapsed


def test_the_portmapper_finds_ypserv(api: Api, nis: NisSite) -> None:
    # The site's rpcbind listens on no reachable network; the relay carries TCP to its
    # unix socket, so the driver asks a real rpcbind for ypserv's port.
    with unix_relay(nis.rpcbind_socket) as portmapper:
        source = add_nis_source(api, nis, servers=["127.0.0.1"], portmapper_port=portmapper)
        group_policy(api, source["id"], "devs")
        response = post_login(api, "ann", "ann-password-1")
    assert response.status_code == 200, response.text
    assert response.json()["offers"][0]["status"] == "assigned"


def test_an_unknown_name_costs_what_a_wrong_password_costs(nis: NisSite) -> None:
    driver = source_kinds()["nis"](nis_params(nis), {}, PasswordHashing(1, 64, 1))
    timings: dict[str, list[float]] = {"wrong": [], "unknown": [], "shadow_unknown": []}
    names = {"wrong": "ann", "unknown": "nobody", "shadow_unknown": "nobody"}
    driver.authenticate(Credentials("cid", "wrong"), None)  # learns the site uses shadow
    for _ in range(15):
        for kind, name in names.items():
            started = time.perf_counter()
            assert driver.authenticate(Credentials(name, "not-the-password"), None) is None
            timings[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    # Without the decoy an unknown name would answer in well under a millisecond, some
    # fifty times faster than a yescrypt check; the bound leaves room for a busy machine.
    assert 0.5 < medians["unknown"] / medians["wrong"] < 2, medians
    assert medians["unknown"] > 0.005, medians


def test_a_nis_login_stays_within_the_statement_budget(
    api: Api, ctx: BrokerContext, nis: NisSite
) -> None:
    source = add_nis_source(api, nis)
    group_policy(api, source["id"], "devs")
    service = LoginService(ctx)
    service.login(f"ben@{LOGIN_DOMAIN}", "ben-password-1")  # warms caches
    with counting() as first:
        result = service.login(f"ann@{LOGIN_DOMAIN}", "ann-password-1")
    assert result.offers[0].status == "assigned"
    with counting() as returning:
        service.login(f"ann@{LOGIN_DOMAIN}", "ann-password-1")
    # The design's budget: at most six statements, the user's row written only when new...
    assert len(first) <= 5, "\n".join(first)
    assert sum(s.startswith("INSERT INTO users") for s in first) == 1, "\n".join(first)
    # ...and not at all when the maps say what they said last time.
    assert not any(s.startswith(("INSERT INTO users", "UPDATE users")) for s in returning)
    # No upsert and no claim, but the read of held desktops a new user skips.
    assert len(returning) == len(first) - 1, "\n".join(returning)


def test_lookup_and_params_validation(api: Api, nis: NisSite) -> None:
    driver = source_kinds()["nis"](nis_params(nis), {}, PasswordHashing(1, 64, 1))
    who = driver.lookup("cid", None)
    assert who is not None and who.groups == {"ops", "printers"}
    assert who.display_name == "Cid Cole"
    assert driver.lookup("nobody", None) is None
    assert driver.lookup("bad:name", None) is None
    hashing = PasswordHashing(1, 64, 1)
    no_groups = source_kinds()["nis"](nis_params(nis, group_map=None), {}, hashing)
    plain = no_groups.lookup("cid", None)
    assert plain is not None and plain.groups == frozenset()

    for params, words in (
        ({"domain": "a b", "servers": ["h"]}, "is not a NIS name"),
        ({"domain": "x", "servers": ["h:99999"]}, "bad port"),
        ({"domain": "x", "servers": []}, "at least 1"),
        ({"domain": "x", "servers": ["h"], "passwd_map": "../etc"}, "is not a NIS name"),
        ({"domain": "x", "servers": ["h"], "password": "x"}, "password"),
    ):
        response = api.client.post(
            "/api/v1/admin/identity-sources",
            json={"name": "bad", "kind": "nis", "params": params},
            headers=api.headers,
        )
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]


AS_BROKER_IMPORTS = """
import json, sys
from deskbroker.errors import DeskbrokerError
from deskbroker.identity.base import Credentials
from deskbroker.identity.nis import NisIdentitySource
from deskbroker.security import PasswordHashing
from deskbroker import outbound
"""
AS_BROKER = (
    AS_BROKER_IMPORTS
    + """
# The ypserv under test listens on loopback, which the broker's default policy denies.
outbound.install(outbound.OutboundPolicy.from_text("127.0.0.0/8", outbound.DEFAULT_DENY))
driver = NisIdentitySource(json.loads(sys.argv[1]), {}, PasswordHashing(1, 64, 1))
try:
    who = driver.authenticate(Credentials("cid", "cid-password-1"), None)
    print(json.dumps({"username": who.username if who else None}))
except DeskbrokerError as exc:
    print(json.dumps({"detail": exc.detail, "reason": exc.extra.get("reason")}))
"""
)


def test_a_shadow_map_needs_a_privileged_port(nis: NisSite) -> None:
    """A broker running as an ordinary user hears why, and CAP_NET_BIND_SERVICE is enough.

    ``nobody`` may not be able to read this checkout (a clone under /root or in a
    ``mktemp -d`` folder): it runs a world-readable copy of this checkout's code."""
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    capable = [*drop, "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    answers = []
    with staged(AS_BROKER_IMPORTS) as copy:
        for user in (drop, capable):
            done = copy.run(user, AS_BROKER, json.dumps(nis_params(nis)))
            assert done.returncode == 0, done.stderr
            answers.append(json.loads(done.stdout))
    assert answers == [{"detail": SHADOW_DENIED, "reason": "shadow_denied"}, {"username": "cid"}]


def test_the_group_map_is_read_whole_and_kept(nis: NisSite) -> None:
    # Thousands of groups: ypserv streams YPPROC_ALL in many record fragments.
    many = [f"team{i:04d}:*:{5000 + i}:{'ann,' if i % 100 == 0 else ''}ben" for i in range(3000)]
    nis.write_map("group.many", ["staff:*:100:", *many])
    driver = source_kinds()["nis"](
        nis_params(nis, group_map="group.many", group_cache_s=300), {}, PasswordHashing(1, 64, 1)
    )
    started = time.perf_counter()
    ann = driver.lookup("ann", None)
    first = time.perf_counter() - started
    teams = {f"team{i:04d}" for i in range(0, 3000, 100)}
    assert ann is not None and ann.groups == {"staff", *teams}
    ben = driver.lookup("ben", None)
    assert ben is not None and len(ben.groups) == 3001
    # The second lookup used the kept map: only its passwd match went to the server.
    nis.write_map("group.many", ["staff:*:100:"])
    again = driver.lookup("ann", None)
    assert again is not None and len(again.groups) == 31
    assert first < 5, first
