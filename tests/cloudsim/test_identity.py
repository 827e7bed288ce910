"""Keystone: tokens, catalog, application credentials, expiry and re-authentication."""

from __future__ import annotations

import time
import warnings
from typing import Any

import openstack
import pytest

from cloudsim.server import CloudSim
from tests.cloudsim.conftest import http, make_connection, token_for


def test_password_auth_returns_201_token_header_and_catalog(sim: CloudSim) -> None:
    status, headers, body = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": "demo",
                            "domain": {"name": "Default"},
                            "password": "password",
                        }
                    },
                },
                "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}},
            }
        },
    )
    assert status == 201
    assert headers["X-Subject-Token"]
    token = body["token"]
    assert token["project"]["name"] == "demo"
    assert {r["name"] for r in token["roles"]} >= {"member"}
    types = {entry["type"]: entry["endpoints"][0]["url"] for entry in token["catalog"]}
    assert types["compute"] == sim.url + "/compute/v2.1"
    assert types["network"] == sim.url + "/network"
    assert types["image"] == sim.url + "/image"
    assert types["block-storage"] == sim.url + "/volume/v3"
    assert types["identity"] == sim.url + "/identity"


@pytest.mark.parametrize("password", ["wrong", ""])
def test_bad_password_is_401(sim: CloudSim, password: str) -> None:
    status, headers, body = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": "demo",
                            "domain": {"name": "Default"},
                            "password": password,
                        }
                    },
                }
            }
        },
    )
    assert status == 401
    assert body["error"]["code"] == 401
    assert "Keystone uri=" in headers["WWW-Authenticate"]


def test_scope_to_project_without_role_is_401(sim: CloudSim) -> None:
    status, _, _ = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": "demo",
                            "domain": {"name": "Default"},
                            "password": "password",
                        }
                    },
                },
                "scope": {"project": {"name": "other", "domain": {"name": "Default"}}},
            }
        },
    )
    assert status == 401


def test_discovery_documents(sim: CloudSim) -> None:
    status, _, body = http("GET", sim.url + "/")
    assert status == 300
    assert body["versions"]["values"][0]["id"].startswith("v3")
    status, _, body = http("GET", sim.auth_url)
    assert status == 200 and body["version"]["status"] == "stable"
    status, _, body = http("GET", sim.url + "/compute/v2.1/")
    assert body["version"]["min_version"] == "2.1"
    assert body["version"]["version"] == "2.100"


def test_requests_without_or_with_unknown_token_are_401(sim: CloudSim) -> None:
    assert http("GET", sim.url + "/compute/v2.1/servers")[0] == 401
    status, _, _ = http("GET", sim.url + "/compute/v2.1/servers", headers={"X-Auth-Token": "nope"})
    assert status == 401


def test_token_ttl_expiry_gives_401(sim: CloudSim) -> None:
    sim.set_token_ttl(0.3)
    try:
        token = token_for(sim)
        assert (
            http("GET", sim.url + "/compute/v2.1/servers", headers={"X-Auth-Token": token})[0]
            == 200
        )
        time.sleep(0.4)
        assert (
            http("GET", sim.url + "/compute/v2.1/servers", headers={"X-Auth-Token": token})[0]
            == 401
        )
    finally:
        sim.set_token_ttl(3600)


def test_expired_token_401_then_openstacksdk_reauthenticates(sim: CloudSim, conn: Any) -> None:
    list(conn.compute.servers())
    before = sim.request_count("POST", r"/auth/tokens$")
    assert sim.expire_tokens() >= 1
    mark = sim.last_request_seq
    list(conn.compute.servers())
    log = sim.requests(since=mark)
    assert [e["status"] for e in log if e["path"].endswith("/servers/detail")] == [401, 200]
    assert sim.request_count("POST", r"/auth/tokens$") == before + 1


def test_application_credential_auth_via_openstacksdk(sim: CloudSim) -> None:
    cred = sim.create_application_credential("demo", "demo", name="broker")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app_conn = openstack.connection.Connection(
            auth_type="v3applicationcredential",
            auth_url=sim.auth_url,
            application_credential_id=cred["id"],
            application_credential_secret=cred["secret"],
            region_name="RegionOne",
        )
    assert list(app_conn.compute.servers()) == []
    flavors = {f.name for f in app_conn.compute.flavors()}
    assert "m1.small" in flavors
    body = next(e for e in sim.requests(method="POST", path="auth/tokens"))
    assert body["status"] == 201


def test_application_credential_wrong_secret_is_401(sim: CloudSim) -> None:
    cred = sim.create_application_credential("demo", "demo")
    status, _, _ = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": cred["id"], "secret": "bad"},
                }
            }
        },
    )
    assert status == 401
    status, _headers, body = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "name": cred["name"],
                        "secret": cred["secret"],
                        "user": {"name": "demo", "domain": {"id": "default"}},
                    },
                }
            }
        },
    )
    assert status == 201
    assert body["token"]["application_credential"]["id"] == cred["id"]
    assert body["token"]["project"]["name"] == "demo"


def test_application_credential_created_through_the_api(sim: CloudSim, conn: Any) -> None:
    user_id = conn.current_user_id
    cred = conn.identity.create_application_credential(user_id, name="made-by-sdk")
    assert cred.secret
    status, _, body = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": cred.id, "secret": cred.secret},
                }
            }
        },
    )
    assert status == 201
    assert body["token"]["methods"] == ["application_credential"]


def test_projects_and_domains(sim: CloudSim) -> None:
    project_id = sim.add_project("third", domain="Partners", users={"carol": "pw"})
    status, _headers, body = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": "carol", "domain": {"name": "Partners"}, "password": "pw"}
                    },
                },
                "scope": {"project": {"id": project_id}},
            }
        },
    )
    assert status == 201
    assert body["token"]["project"]["domain"]["name"] == "Partners"
    # The same user name in the Default domain does not exist.
    status, _, _ = http(
        "POST",
        sim.auth_url + "/auth/tokens",
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": "carol", "domain": {"name": "Default"}, "password": "pw"}
                    },
                }
            }
        },
    )
    assert status == 401
    carol = make_connection(
        sim,
        "third",
        user="carol",
        password="pw",
        user_domain_name="Partners",
        project_domain_name="Partners",
    )
    assert list(carol.compute.servers()) == []


def test_projects_do_not_see_each_other(sim: CloudSim, conn: Any, other_conn: Any) -> None:
    sim.seed_servers(3, project="demo")
    sim.seed_servers(2, project="other")
    assert len(list(conn.compute.servers())) == 3
    assert len(list(other_conn.compute.servers())) == 2
    server_id = sim.servers("demo")[0]["id"]
    with pytest.raises(openstack.exceptions.NotFoundException):
        other_conn.compute.get_server(server_id)
