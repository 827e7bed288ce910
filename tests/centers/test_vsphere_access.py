"""Who may point a vSphere center where: a tenant administrator with their own vCenter
account and, at most, their own CA; switching TLS verification off is a global
administrator's; a changed CA drops the stored password."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deskbroker.bootstrap import add_local_user
from tests.centers.vcsim import PASSWORD, Vcsim, running
from tests.helpers import ADMIN_PASSWORD, Api, run_queued_scan


@pytest.fixture
def sim() -> Iterator[Vcsim]:
    with running("-vms", "1", "-templates", "1") as made:
        yield made


def _tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"])


def test_only_a_global_admin_switches_tls_verification_off(api: Api, sim: Vcsim) -> None:
    boss = _tenant_admin(api)
    body = {
        "name": "vc-b",
        "kind": "vsphere",
        "params": sim.params(insecure=True),
        "secrets": {"password": PASSWORD},
    }
    refused = boss.client.post("/api/v1/admin/centers", json=body, headers=boss.headers)
    assert refused.status_code == 403, refused.text
    assert "insecure" in refused.json()["detail"]
    bad_pem = {**body, "params": sim.params(ca_pem="nope")}
    answer = boss.client.post("/api/v1/admin/centers", json=bad_pem, headers=boss.headers)
    assert answer.status_code == 422 and "PEM" in answer.text
    assert api.get("centers?name=vc-b")["items"] == []

    # With the CA given, the tenant's own account: theirs to add and to scan. The
    # password is a secret: stored sealed, never shown.
    own = boss.post("centers", {**body, "params": sim.params(), "secrets": {"password": "vc-9z"}})
    assert own["has_secrets"] and "vc-9z" not in str(own)
    scanned = run_queued_scan(boss, own["id"])
    assert scanned["status"] == "ok", scanned["status_message"]
    # Another CA without the password again: the stored one is dropped, so it never goes
    # to a server the broker would now trust on someone else's word.
    other_ca = sim.params(ca_pem=sim.ca_pem + "\n" + sim.ca_pem)
    changed = boss.patch(f"centers/{own['id']}", {"params": other_ca})
    assert not changed["has_secrets"]
    # The global administrator may switch verification off.
    made = api.post("centers", {**body, "name": "vc-global"})
    assert made["params"]["insecure"] is True
