"""Who may point a libvirt center where: a tenant administrator only at a remote host
over +tcp with their own credentials; the broker host's hypervisor, files and keys are
a global administrator's."""

from __future__ import annotations

from pathlib import Path

from deskbroker.bootstrap import add_local_user
from tests.centers.libvirt_node import center_params
from tests.helpers import ADMIN_PASSWORD, Api


def _tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"])


def test_a_tenant_admin_reaches_no_hypervisor_or_file_of_the_broker_host(
    api: Api, tmp_path: Path
) -> None:
    boss = _tenant_admin(api)
    for uri in (
        "qemu:///system",
        "qemu+ssh://root@kvm1.example.org/system",
        "qemu+tcp://kvm1.example.org/system?pkipath=/etc/deskbroker",
        f"test://{tmp_path}/node.xml",
    ):
        body = {"name": "borrowed", "kind": "libvirt", "params": {"uri": uri}}
        refused = boss.client.post("/api/v1/admin/centers", json=body, headers=boss.headers)
        assert refused.status_code == 403, refused.text
        assert "host_side_uri" in refused.json()["detail"]
    running_a_command = {"name": "x", "kind": "libvirt", "params": {"uri": "qemu+ext:///system"}}
    answer = boss.client.post("/api/v1/admin/centers", json=running_a_command, headers=boss.headers)
    assert answer.status_code == 422 and "transport 'ext'" in answer.text
    assert api.get("centers?name=borrowed")["items"] == []

    # A remote host with the tenant's own SASL account is theirs to add; the password is
    # a secret: stored sealed, never shown.
    own = boss.post(
        "centers",
        {
            "name": "kvm-b",
            "kind": "libvirt",
            "params": {"uri": "qemu+tcp://kvm1.example.org/system", "username": "tenant-b"},
            "secrets": {"password": "sasl-pass-5"},
        },
    )
    assert own["has_secrets"] and "sasl-pass-5" not in str(own)
    # The global administrator may use the broker host's own.
    made = api.post(
        "centers", {"name": "local", "kind": "libvirt", "params": center_params(tmp_path)}
    )
    assert made["params"]["uri"].startswith("test://")
