"""The client API (connect, descriptors, release, queue), probes and the health endpoints."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from tests.helpers import USER_PASSWORD, Api, bearer


@pytest.fixture
def listening() -> Iterator[int]:
    """A real TCP server on 127.0.0.1; the kernel completes handshakes from its backlog."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield int(server.getsockname()[1])
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: bound for a moment to get it, then released."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def test_probe_against_a_real_socket_and_a_closed_port(
    api: Api, listening: int, closed_port: int
) -> None:
    center = api.post(
        "centers",
        {
            "name": "probe",
            "kind": "static",
            "params": {
                "machines": [
                    {
                        "name": "up",
                        "address": "127.0.0.1",
                        "ports": {"rdp": listening, "vnc": closed_port, "ssh": closed_port},
                    },
                    {
                        "name": "down",
                        "address": "127.0.0.1",
                        "ports": {"rdp": closed_port, "vnc": closed_port, "ssh": closed_port},
                    },
                ]
            },
        },
    )
    by_name = {d["name"]: d for d in api.get(f"desktops?center_id={center['id']}")["items"]}
    assert by_name["up"]["reachable"] is None
    up = api.post(f"desktops/{by_name['up']['id']}/probe", {}, status=200)
    assert up["reachable"] is True
    rdp = up["protocols"]["rdp"]
    assert rdp["port"] == listening and rdp["reachable"] is True
    assert rdp["latency_ms"] is not None and rdp["latency_ms"] >= 0
    assert rdp["message"] == f"127.0.0.1:{listening} accepted a connection"
    assert up["protocols"]["vnc"]["reachable"] is False
    assert up["protocols"]["vnc"]["message"].startswith(f"127.0.0.1:{closed_port} is not reachable")
    down = api.post(f"desktops/{by_name['down']['id']}/probe", {}, status=200)
    assert down["reachable"] is False
    assert all(not p["reachable"] for p in down["protocols"].values())
    # The answer is remembered on the desktop.
    assert api.get(f"desktops/{by_name['up']['id']}")["reachable"] is True
    assert api.get(f"desktops/{by_name['down']['id']}")["reachable"] is False
    assert (
        api.post("desktops/nope/probe", {}, status=404)["detail"] == "desktop nope does not exist"
    )


def _user(api: Api, name: str) -> tuple[str, str]:
    """(token, id of the desktop the user got at login)."""
    result = api.login(name)
    offer = result["offers"][0]
    assert offer["status"] == "assigned", offer
    return result["token"], offer["desktop"]["id"]


def test_descriptors_for_rdp_vnc_and_ssh(api: Api) -> None:
    api.seed_pool(1, users=1, ports={"rdp": 3390, "vnc": 5901, "ssh": 2222})
    token, desktop = _user(api, "user0")
    url = f"/api/v1/client/desktops/{desktop}/connect"

    def connect(body: dict[str, str], status: int = 200) -> dict[str, str]:
        response = api.client.post(url, json=body, headers=bearer(token))
        assert response.status_code == status, response.text
        result: dict[str, str] = response.json()
        return result

    rdp = connect({"protocol": "rdp"})
    assert (rdp["protocol"], rdp["host"], rdp["port"]) == ("rdp", "127.0.1.1", 3390)
    assert "full address:s:127.0.1.1:3390\r\n" in rdp["content"]
    assert "username:s:user0\r\n" in rdp["content"]
    assert rdp["filename"] == "lab-000.rdp" and rdp["media_type"] == "application/x-rdp"
    vnc = connect({"protocol": "vnc"})
    assert vnc["content"].startswith("[Connection]\nHost=127.0.1.1\nPort=5901\n")
    assert vnc["uri"] == "vnc://127.0.1.1:5901" and vnc["filename"] == "lab-000.vnc"
    ssh = connect({"protocol": "ssh"})
    assert ssh["uri"] == "ssh://user0@127.0.1.1:2222" and ssh["content"] == ssh["uri"] + "\n"
    # Without a choice the plan's first protocol; the default plan starts with RDP.
    assert connect({})["protocol"] == "rdp"
    text = connect({"protocol": "spice"}, status=422)["detail"]
    assert (
        text == "protocol 'spice' is not offered for this desktop; "
        "offered: rdp, vnc, ssh, html5-vnc, html5-ssh"
    )
    connects = api.get("events?kind=connect")["items"]
    assert [e["detail"]["protocol"] for e in connects] == ["rdp", "ssh", "vnc", "rdp"]


def test_protocol_plan_decides_what_is_offered(api: Api) -> None:
    ids = api.seed_pool(1, users=1)
    plan = api.post(
        "protocol-plans",
        {
            "name": "vnc-only",
            "protocols": [{"protocol": "vnc", "port": 5999, "settings": {"view_only": True}}],
        },
    )
    api.patch(
        f"policies/{ids['policy']}",
        {"entries": [{"pool_id": ids["pool"], "protocol_plan_id": plan["id"]}]},
    )
    token, desktop = _user(api, "user0")
    url = f"/api/v1/client/desktops/{desktop}/connect"
    chosen = api.client.post(url, json={}, headers=bearer(token)).json()
    assert chosen["protocol"] == "vnc" and chosen["port"] == 5999
    assert "ViewOnly=1" in chosen["content"]
    refused = api.client.post(url, json={"protocol": "rdp"}, headers=bearer(token))
    assert refused.status_code == 422
    assert refused.json()["detail"].endswith("offered: vnc")


def test_descriptor_file_download(api: Api) -> None:
    api.seed_pool(1, users=1, ports={"vnc": 5901})
    token, desktop = _user(api, "user0")
    url = f"/api/v1/client/desktops/{desktop}/descriptor"
    vnc = api.client.get(f"{url}?protocol=vnc", headers=bearer(token))
    assert vnc.status_code == 200
    assert vnc.headers["content-type"].startswith("application/x-vnc")
    assert vnc.headers["content-disposition"] == 'attachment; filename="lab-000.vnc"'
    assert vnc.text.startswith("[Connection]\nHost=127.0.1.1\nPort=5901\n")
    rdp = api.client.get(url, headers=bearer(token))
    assert rdp.headers["content-disposition"] == 'attachment; filename="lab-000.rdp"'
    assert re.search(r"^full address:s:127\.0\.1\.1:3389\r$", rdp.text, re.M)
    bad = api.client.get(f"{url}?protocol=" + "x" * 21, headers=bearer(token))
    assert bad.status_code == 422 and bad.json()["detail"].startswith("protocol:")


def test_nobody_connects_to_someone_elses_desktop(api: Api) -> None:
    api.seed_pool(2, users=2)
    _, mine = _user(api, "user0")
    other_token, _ = _user(api, "user1")
    for token in (other_token, api.token):
        for method, path in (
            ("POST", f"/api/v1/client/desktops/{mine}/connect"),
            ("GET", f"/api/v1/client/desktops/{mine}/descriptor"),
            ("POST", f"/api/v1/client/desktops/{mine}/release"),
        ):
            response = api.client.request(
                method, path, json={} if method == "POST" else None, headers=bearer(token)
            )
            assert response.status_code == 404, response.text
            assert response.json()["detail"] == f"desktop {mine} is not assigned to you"
    assert api.get(f"desktops/{mine}")["assigned_user_id"] is not None


def test_release_hands_the_desktop_to_the_first_in_the_queue(api: Api) -> None:
    ids = api.seed_pool(1, users=3)
    token0, desktop = _user(api, "user0")
    waiting = [api.login(f"user{n}") for n in (1, 2)]
    assert [w["offers"][0]["position"] for w in waiting] == [1, 2]
    mine = api.client.get("/api/v1/client/desktops", headers=bearer(waiting[1]["token"])).json()
    assert mine["desktops"] == []
    assert mine["queue"][0]["position"] == 2 and mine["queue"][0]["pool_name"] == "lab"
    assert "number 2 in the queue" in mine["queue"][0]["message"]

    response = api.client.post(f"/api/v1/client/desktops/{desktop}/release", headers=bearer(token0))
    assert response.status_code == 204 and response.content == b""
    user1 = api.get("users?username=user1")["items"][0]["id"]
    assert api.get(f"desktops/{desktop}")["assigned_user_id"] == user1
    held = api.client.get("/api/v1/client/desktops", headers=bearer(waiting[0]["token"])).json()
    assert [d["id"] for d in held["desktops"]] == [desktop] and held["queue"] == []
    still = api.client.get("/api/v1/client/desktops", headers=bearer(waiting[1]["token"])).json()
    assert still["queue"][0]["position"] == 1
    assert [q["username"] for q in api.get(f"pools/{ids['pool']}/queue")["items"]] == ["user2"]
    # Released once is released: the old holder cannot release it again.
    again = api.client.post(f"/api/v1/client/desktops/{desktop}/release", headers=bearer(token0))
    assert again.status_code == 404
    kinds = [(e["kind"], e["actor"]) for e in api.get("events?limit=2")["items"]]
    assert kinds == [("assign", "queue"), ("release", "user0")]


def test_login_me_and_refusals(api: Api) -> None:
    api.seed_pool(1, users=1)
    result = api.login("user0")
    me = api.client.get("/api/v1/client/me", headers=bearer(result["token"])).json()
    assert me["username"] == "user0" and me["role"] == "user"
    assert me["user_id"] == result["user_id"] and me["expires_at"] == result["expires_at"]
    for body, status, words in (
        ({"username": "user0", "password": "wrong-one"}, 401, "Wrong username or password."),
        ({"username": "nobody", "password": USER_PASSWORD}, 401, "Wrong username or password."),
        (
            {"username": "user0", "password": USER_PASSWORD, "tenant": "nope"},
            401,
            "Wrong username or password.",
        ),
        ({"username": "user0"}, 422, "password is required"),
        ({"username": "", "password": "x"}, 422, "username"),
    ):
        response = api.client.post("/api/v1/auth/login", json=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert words in response.json()["detail"]
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    user = api.get("users?username=user0")["items"][0]
    api.patch(f"users/{user['id']}", {"disabled": True})
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "user0", "password": USER_PASSWORD}
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "This account is disabled; ask your administrator."
    # Wrong password and unknown user are recorded in the tenant; an unknown tenant has
    # no log to be recorded in.
    assert api.get("events?kind=login_failed")["total"] == 2


def test_health_ready_and_metrics(api: Api) -> None:
    health = api.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["version"]
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["schema"]

    def sample(text: str, name: str) -> float:
        found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    ok = 'deskbroker_logins_total{result="ok"}'
    refused = 'deskbroker_logins_total{result="refused"}'
    scrape = {"Authorization": f"Bearer {api.ctx.settings.metrics_token}"}
    before = api.client.get("/metrics", headers=scrape).text
    api.login("admin", "admin-password-1")
    api.login("admin", "wrong-password", status=401)
    metrics = api.client.get("/metrics", headers=scrape)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert sample(metrics.text, ok) == sample(before, ok) + 1
    assert sample(metrics.text, refused) == sample(before, refused) + 1
    for name in (
        "deskbroker_http_requests_total",
        "deskbroker_sql_statements_total",
        "deskbroker_login_seconds_bucket",
    ):
        assert name in metrics.text

    # Responses are counted by method and status class; a method HTTP does not have is
    # counted as OTHER, so made-up methods add no series.
    gets = 'deskbroker_http_requests_total{method="GET",status="2xx"}'
    other = 'deskbroker_http_requests_total{method="OTHER",status="4xx"}'
    before = api.client.get("/metrics", headers=scrape).text
    for _ in range(3):
        assert api.client.get("/healthz").status_code == 200
    for made_up in ("FROBNICATE", "BREW"):
        assert api.client.request(made_up, "/healthz").status_code == 405
    after = api.client.get("/metrics", headers=scrape).text
    assert sample(after, gets) == sample(before, gets) + 4  # the healthz and one scrape
    assert sample(after, other) == sample(before, other) + 2
    assert "FROBNICATE" not in after and "BREW" not in after
