"""Settings that reach other hosts: host-side credentials for global admins only, the
outbound network policy on save and on connect, no remote body in a message, and secrets
that do not follow a URL to another host. Real HTTP against cloudsim and a stdlib server
standing in for an internal service."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloudsim.server import CloudSim
from deskbroker import outbound
from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user, ensure_defaults
from deskbroker.centers.openstack.session import CloudFailure
from deskbroker.centers.registry import open_driver
from deskbroker.config import Settings
from deskbroker.errors import IdentityProviderError
from deskbroker.services.context import BrokerContext
from tests.helpers import ADMIN_PASSWORD, Api

SECRET_BODY = "INTERNAL-ONLY-7f3a9c"


@pytest.fixture(scope="module")
def sim() -> Iterator[CloudSim]:
    simulator = CloudSim(projects=["demo"]).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def internal() -> Iterator[tuple[str, list[str]]]:
    """An internal service that answers anything with a body nobody outside may read;
    yields its URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            asked.append(self.path)
            body = json.dumps({"error": {"message": SECRET_BODY, "code": 404}}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    # On 127.0.0.2, so that a policy can tell it from the issuer on 127.0.0.1.
    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{server.server_port}", asked
    server.shutdown()
    server.server_close()


def _tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"])


def _center(sim: CloudSim, **params: Any) -> dict[str, Any]:
    return {
        "name": "cloud",
        "kind": "openstack",
        "params": {
            "auth_url": sim.auth_url,
            "project_name": "demo",
            "username": "demo",
            "retries": 0,
            **params,
        },
        "secrets": {"password": "password"},
    }


def _refusal(response: Any) -> str:
    return str(response.json()["detail"])


# --- host-side credentials ------------------------------------------------------------
def test_only_a_global_admin_may_use_the_broker_hosts_clouds_yaml(api: Api) -> None:
    boss = _tenant_admin(api)
    body = {"name": "borrowed", "kind": "openstack", "params": {"cloud": "operator"}}
    response = boss.client.post("/api/v1/admin/centers", json=body, headers=boss.headers)
    assert response.status_code == 403, response.text
    assert "only a global administrator" in _refusal(response)
    assert "cloud" in _refusal(response)
    assert api.get("centers?name=borrowed")["items"] == []
    # The operator may: the entry is theirs (it does not exist here, so the scan says so).
    made = api.post("centers", body)
    assert made["params"]["cloud"] == "operator"


def test_a_tenant_admin_cannot_change_a_center_that_uses_host_side_credentials(
    api: Api,
) -> None:
    made = api.post("centers", {"name": "op", "kind": "openstack", "params": {"cloud": "op"}})
    add_local_user(api.ctx, "boss-a", ADMIN_PASSWORD, role="tenant_admin")
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-a", "password": ADMIN_PASSWORD}
    )
    boss = Api(api.client, api.ctx, response.json()["token"])
    refused = boss.client.patch(
        f"/api/v1/admin/centers/{made['id']}",
        json={"params": {"cloud": "op", "region_name": "elsewhere"}},
        headers=boss.headers,
    )
    assert refused.status_code == 403, refused.text
    assert api.get(f"centers/{made['id']}")["params"] == made["params"]
    # What does not touch the connection stays theirs to change.
    assert boss.patch(f"centers/{made['id']}", {"scan_interval_s": 300})["scan_interval_s"] == 300


def test_a_global_admins_api_token_cannot_use_the_broker_hosts_credentials(api: Api) -> None:
    made = api.post(
        "api-tokens",
        {"name": "automation", "scopes": ["centers:*", "identity-sources:*"], "expires_in_days": 1},
    )
    bot = Api(api.client, api.ctx, made["token"])
    borrowed = {"name": "borrowed", "kind": "openstack", "params": {"cloud": "operator"}}
    refused = bot.post("centers", borrowed, status=403)
    assert "not with an API token" in refused["detail"]
    ldap = {
        "name": "dir",
        "kind": "ldap",
        "params": {"servers": ["ldaps://ldap.example.org"], "base_dn": "dc=x", "ca_file": "/a"},
    }
    assert "ca_file" in bot.post("identity-sources", ldap, status=403)["detail"]
    assert api.get("centers?name=borrowed")["items"] == []
    # What reads nothing of the host stays the token's to do; the admin signed in may do all.
    bot.post("centers", {**borrowed, "params": {"auth_url": "https://keystone.example.org/v3"}})
    api.post("identity-sources", ldap)


@pytest.mark.parametrize(
    ("kind", "params", "host_side"),
    [
        (
            "ldap",
            {"servers": ["ldap://ldap.example.org"], "base_dn": "dc=example,dc=org"},
            {"ca_file": "/etc/shadow"},
        ),
        (
            "oidc",
            {"issuer": "https://login.example.org", "client_id": "broker"},
            {"ca_file": "/etc/shadow"},
        ),
        # The default shadow map is read from a privileged port: the host's root.
        ("nis", {"domain": "corp", "servers": ["nis.example.org"]}, {}),
    ],
)
def test_only_a_global_admin_may_use_the_broker_hosts_files_or_ports(
    api: Api, kind: str, params: dict[str, Any], host_side: dict[str, Any]
) -> None:
    boss = _tenant_admin(api)
    body = {"name": "dir", "kind": kind, "params": {**params, **host_side}}
    response = boss.client.post("/api/v1/admin/identity-sources", json=body, headers=boss.headers)
    assert response.status_code == 403, response.text
    assert "only a global administrator" in _refusal(response)
    # Without them it is theirs to add.
    body["params"] = {**params, "shadow_map": None} if kind == "nis" else params
    boss.post("identity-sources", body)


# --- the outbound policy on save ------------------------------------------------------
@pytest.fixture
def strict(settings: Settings, tmp_path: Path) -> Iterator[Api]:
    """A broker with the default outbound policy (loopback and link-local denied)."""
    values = settings.model_dump(exclude={"outbound_allow"})
    values["data_dir"] = tmp_path / "strict"
    ctx = BrokerContext.from_settings(Settings(**values))
    ensure_defaults(ctx)
    try:
        with TestClient(create_app(ctx)) as client:
            yield Api.with_admin(client, ctx)
    finally:
        ctx.db.dispose()


@pytest.mark.parametrize(
    "auth_url",
    [
        "http://127.0.0.1:5000/v3",
        "http://127.1:5000/v3",
        "http://0x7f000001/v3",
        "http://[::1]:5000/v3",
        "http://[::ffff:127.0.0.1]/v3",
        "http://localhost:5000/v3",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0:5000/v3",
    ],
)
def test_a_center_url_on_a_denied_network_is_refused_on_save(strict: Api, auth_url: str) -> None:
    body = {"name": "c", "kind": "openstack", "params": {"auth_url": auth_url, "username": "u"}}
    response = strict.client.post("/api/v1/admin/centers", json=body, headers=strict.headers)
    assert response.status_code == 422, response.text
    assert "outbound policy" in _refusal(response)
    assert "params.auth_url" in _refusal(response)
    assert strict.get("centers")["items"] == []


@pytest.mark.parametrize(
    ("kind", "params", "where"),
    [
        ("ldap", {"servers": ["ldap://127.0.0.1:389"], "base_dn": "dc=x"}, "servers.0"),
        (
            "activedirectory",
            {"servers": ["ldaps://dc.example.org", "ldap://169.254.1.1"], "base_dn": "dc=x"},
            "servers.1",
        ),
        ("nis", {"domain": "example", "servers": ["[::1]:834"]}, "servers.0"),
        ("oidc", {"issuer": "http://169.254.169.254", "client_id": "b"}, "issuer"),
    ],
)
def test_a_directory_or_provider_on_a_denied_network_is_refused_on_save(
    strict: Api, kind: str, params: dict[str, Any], where: str
) -> None:
    body = {"name": "s", "kind": kind, "params": params}
    response = strict.client.post(
        "/api/v1/admin/identity-sources", json=body, headers=strict.headers
    )
    assert response.status_code == 422, response.text
    assert f"params.{where}" in _refusal(response)
    assert "outbound policy" in _refusal(response)


def test_the_most_specific_network_decides(tmp_path: Path) -> None:
    policy = outbound.OutboundPolicy.from_text("10.1.0.0/16", "10.0.0.0/8,0.0.0.0/0")
    assert policy.refusal("10.1.2.3") is None
    assert policy.refusal("10.2.0.1") is not None
    assert policy.refusal("192.0.2.1") is not None
    with pytest.raises(ValueError, match="outbound_allow"):
        Settings(data_dir=tmp_path, outbound_allow="10.0.0.0/33")


# --- the outbound policy on connect ---------------------------------------------------
def test_a_name_that_resolves_to_a_denied_address_is_refused_on_connect(sim: CloudSim) -> None:
    # localhost passes no save-time check here: it is written as a name, and the driver
    # is opened directly, as the engine does with a center saved under another policy.
    outbound.install(outbound.OutboundPolicy())
    before = sim.request_count()
    driver = open_driver(
        "openstack",
        {
            "auth_url": sim.auth_url.replace("127.0.0.1", "localhost"),
            "project_name": "demo",
            "username": "demo",
            "retries": 0,
        },
        {"password": "password"},
    )
    with pytest.raises(CloudFailure, match="outbound policy") as refused:
        driver.inventory()
    assert "127.0.0.1" in refused.value.detail
    assert sim.request_count() == before  # not even the version discovery went out


# --- no remote body in a message ------------------------------------------------------
def test_a_remote_body_never_reaches_an_error_or_the_center_status(
    api: Api, internal: tuple[str, list[str]]
) -> None:
    url, asked = internal
    params = {"auth_url": f"{url}/v3", "username": "u", "project_name": "p", "retries": 0}
    driver = open_driver("openstack", params, {"password": "p"})
    with pytest.raises(CloudFailure) as failed:
        driver.inventory()
    assert asked, "the internal service was asked"
    assert SECRET_BODY not in failed.value.detail
    assert "404" in failed.value.detail
    # Through the API: whatever a scan of it says, the body is not in it.
    center = api.post(
        "centers",
        {"name": "probe", "kind": "openstack", "params": params, "secrets": {"password": "p"}},
    )
    assert SECRET_BODY not in json.dumps(api.get(f"centers/{center['id']}"))


# --- secrets follow no URL ------------------------------------------------------------
def test_a_center_password_is_dropped_when_its_auth_url_changes(api: Api, sim: CloudSim) -> None:
    center = api.post("centers", _center(sim))
    assert center["has_secrets"], center
    # Another setting of the same Keystone keeps the password.
    kept = api.patch(
        f"centers/{center['id']}", {"params": {**center["params"], "region_name": "RegionOne"}}
    )
    assert kept["has_secrets"]
    moved = {**center["params"], "auth_url": "https://keystone.example.org/v3"}
    changed = api.patch(f"centers/{center['id']}", {"params": moved})
    assert changed["has_secrets"] is False
    assert api.get(f"centers/{center['id']}")["has_secrets"] is False
    # With a new password for the new URL, the new password is kept.
    again = api.patch(
        f"centers/{center['id']}",
        {"params": {**moved, "auth_url": sim.auth_url}, "secrets": {"password": "password"}},
    )
    assert again["has_secrets"]


def test_a_bind_password_is_dropped_when_the_directory_servers_change(api: Api) -> None:
    params = {"servers": ["ldap://ldap.example.org"], "base_dn": "dc=example,dc=org"}
    source = api.post(
        "identity-sources",
        {"name": "dir", "kind": "ldap", "params": params, "secrets": {"bind_password": "pw"}},
    )
    assert source["has_secrets"]
    moved = {**params, "servers": ["ldap://ldap.example.org", "ldap://evil.example.net"]}
    assert api.patch(f"identity-sources/{source['id']}", {"params": moved})["has_secrets"] is False


def _default_tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "boss-a", ADMIN_PASSWORD, role="tenant_admin")
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-a", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"])


@pytest.mark.parametrize(
    ("kind", "params", "secrets", "weakened"),
    [
        ("center", {}, {"password": "password"}, {"verify_tls": False}),
        (
            "ldap",
            {"servers": ["ldap://ldap.example.org"], "base_dn": "dc=x", "start_tls": True},
            {"bind_password": "pw"},
            {"start_tls": False},
        ),
        (
            "ldap",
            {"servers": ["ldaps://ldap.example.org"], "base_dn": "dc=x"},
            {"bind_password": "pw"},
            {"verify_tls": False},
        ),
        (
            "oidc",
            {"issuer": "https://login.example.org", "client_id": "broker"},
            {"client_secret": "s3cret"},
            {"verify_tls": False},
        ),
    ],
)
def test_secrets_are_dropped_when_a_tenant_admin_weakens_tls(
    api: Api,
    sim: CloudSim,
    kind: str,
    params: dict[str, Any],
    secrets: dict[str, Any],
    weakened: dict[str, Any],
) -> None:
    """A password given over verified TLS is not sent once a tenant admin turns it off."""
    if kind == "center":
        body = _center(sim, **params)
        path = "centers"
    else:
        body = {"name": "dir", "kind": kind, "params": params, "secrets": secrets}
        path = "identity-sources"
    made = api.post(path, body)
    assert made["has_secrets"], made
    boss = _default_tenant_admin(api)
    changed = boss.patch(f"{path}/{made['id']}", {"params": {**made["params"], **weakened}})
    assert changed["has_secrets"] is False
    assert api.get(f"{path}/{made['id']}")["has_secrets"] is False
    # Given anew with the change, they are kept.
    again = boss.patch(
        f"{path}/{made['id']}", {"params": {**made["params"], **weakened}, "secrets": secrets}
    )
    assert again["has_secrets"]


def test_secrets_are_dropped_when_another_ca_is_trusted(api: Api) -> None:
    params = {"servers": ["ldaps://ldap.example.org"], "base_dn": "dc=x", "ca_file": "/etc/a.pem"}
    made = api.post(
        "identity-sources",
        {"name": "dir", "kind": "ldap", "params": params, "secrets": {"bind_password": "pw"}},
    )
    assert made["has_secrets"]
    moved = {**made["params"], "ca_file": "/etc/b.pem"}
    assert api.patch(f"identity-sources/{made['id']}", {"params": moved})["has_secrets"] is False


def _static(*machines: dict[str, Any]) -> dict[str, Any]:
    return {"name": "lab", "kind": "static", "params": {"machines": list(machines)}}


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "::1", "localhost"])
def test_a_static_machine_on_a_denied_network_is_refused_on_save(strict: Api, address: str) -> None:
    machines = [{"name": "pc-1", "address": "10.0.0.5"}, {"name": "meta", "address": address}]
    response = strict.client.post(
        "/api/v1/admin/centers", json=_static(*machines), headers=strict.headers
    )
    assert response.status_code == 422, response.text
    assert "params.machines.1.address (machine 'meta')" in _refusal(response)
    assert "outbound policy" in _refusal(response)
    assert strict.get("centers")["items"] == []
    # Moving a saved machine there is refused too; a name is checked once resolved.
    center = strict.post("centers", _static({"name": "meta", "address": "pc.lab.example"}))
    moved = strict.client.patch(
        f"/api/v1/admin/centers/{center['id']}",
        json={"params": {"machines": [{"name": "meta", "address": address}]}},
        headers=strict.headers,
    )
    assert moved.status_code == 422, moved.text


def test_adding_or_moving_a_machine_keeps_the_bmc_password(api: Api) -> None:
    bmc = {"url": "https://bmc-1.example.org", "username": "operator"}
    made = api.post(
        "centers",
        {
            **_static({"name": "pc-1", "address": "10.0.0.5", "redfish": bmc}),
            "secrets": {"redfish_password": "pw"},
        },
    )
    assert made["has_secrets"]
    machines = [
        {"name": "pc-1", "address": "10.0.0.6", "redfish": bmc},
        {"name": "pc-2", "address": "pc-2.lab.example"},
    ]
    kept = api.patch(f"centers/{made['id']}", {"params": {"machines": machines}})
    assert kept["has_secrets"] is True
    # The BMC's own URL is what the password was given for.
    machines[0]["redfish"] = {**bmc, "url": "https://bmc-1.evil.example.net"}
    moved = api.patch(f"centers/{made['id']}", {"params": {"machines": machines}})
    assert moved["has_secrets"] is False


@pytest.mark.parametrize(
    ("change", "kept"),
    [({"port": 8443}, False), ({"host": "vc2.example.org"}, False), ({"timeout_s": 30}, True)],
)
def test_a_vcenter_password_follows_neither_another_port_nor_another_host(
    api: Api, change: dict[str, Any], kept: bool
) -> None:
    params = {"host": "vc.example.org", "username": "broker@vsphere.local"}
    made = api.post(
        "centers",
        {"name": "vc", "kind": "vsphere", "params": params, "secrets": {"password": "pw"}},
    )
    assert made["has_secrets"]
    changed = api.patch(f"centers/{made['id']}", {"params": {**made["params"], **change}})
    assert changed["has_secrets"] is kept


# --- OpenID providers -----------------------------------------------------------------
@pytest.fixture
def provider() -> Iterator[dict[str, Any]]:
    """A stand-in OpenID provider on 127.0.0.1 whose discovery document names endpoints
    on 127.0.0.2 (set ``endpoints``), and whose token endpoint refuses with free text."""
    state: dict[str, Any] = {"asked": []}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            state["asked"].append(self.path)
            issuer = state["issuer"]
            self._send(
                200,
                {
                    "issuer": issuer,
                    "authorization_endpoint": f"{issuer}/auth",
                    "token_endpoint": f"{issuer}/token",
                    "jwks_uri": f"{state['endpoints']}/jwks",
                    "userinfo_endpoint": f"{state['endpoints']}/me",
                },
            )

        def do_POST(self) -> None:
            state["asked"].append(self.path)
            self._send(
                400,
                {"error": "invalid_client", "error_description": f"{SECRET_BODY} <b>x</b>"},
            )

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["issuer"] = f"http://127.0.0.1:{server.server_port}"
    state["endpoints"] = state["issuer"]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def _oidc(issuer: str) -> Any:
    from deskbroker.identity.base import source_kinds
    from deskbroker.security import PasswordHashing

    params = {"issuer": issuer, "client_id": "broker", "timeout_s": 2}
    return source_kinds()["oidc"](params, {"client_secret": "s"}, PasswordHashing(1, 64, 1))


def test_an_endpoint_that_discovery_names_on_a_denied_network_is_refused(
    provider: dict[str, Any], internal: tuple[str, list[str]]
) -> None:
    url, asked = internal
    provider["endpoints"] = url
    # The issuer is allowed; the address its discovery points the broker at is not.
    outbound.install(outbound.OutboundPolicy.from_text("127.0.0.1/32", "127.0.0.0/8"))
    driver = _oidc(provider["issuer"])
    try:
        with pytest.raises(IdentityProviderError, match="outbound policy"):
            driver.userinfo("access-token")
    finally:
        driver.close()
    assert provider["asked"] == ["/.well-known/openid-configuration"]
    assert asked == []


def test_a_providers_free_text_never_reaches_an_error(provider: dict[str, Any]) -> None:
    driver = _oidc(provider["issuer"])
    try:
        with pytest.raises(IdentityProviderError) as refused:
            driver.exchange_code(code="c", code_verifier="v", redirect_uri="http://b/cb")
    finally:
        driver.close()
    assert "invalid_client" in refused.value.detail
    assert SECRET_BODY not in refused.value.detail


# --- desktop probes -------------------------------------------------------------------
def test_a_desktop_probe_does_not_scan_the_brokers_own_host(
    strict: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "self.lab.example" else host, *args, **kwargs)

    try:
        center = strict.post(
            "centers",
            {
                "name": "lab",
                "kind": "static",
                "params": {
                    "machines": [
                        {
                            "name": "self",
                            "address": "self.lab.example",
                            "ports": {"rdp": port, "vnc": port, "ssh": port},
                        }
                    ]
                },
            },
        )
        # A name is checked once resolved: by the time of the probe, it resolves to the
        # broker's own host.
        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        desktop = strict.get(f"desktops?center_id={center['id']}")["items"][0]
        answer = strict.post(f"desktops/{desktop['id']}/probe", {}, status=200)
        assert answer["reachable"] is False
        assert "outbound policy" in answer["protocols"]["rdp"]["message"]
        with pytest.raises(TimeoutError):
            server.accept()  # not even a TCP handshake reached the port
    finally:
        server.close()


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "127.0.0.1", "::1"],
)
def test_the_default_policy_denies_every_cloud_metadata_service(address: str) -> None:
    policy = outbound.OutboundPolicy()
    refusal = policy.refusal(address)
    assert refusal is not None and "outbound policy denies" in refusal
    # Their neighbours are ordinary addresses.
    assert policy.refusal("100.100.100.201") is None
    assert policy.refusal("fd00:ec2::253") is None
