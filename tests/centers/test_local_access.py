"""Only a global administrator may add a local center: it runs programs as a user of
the broker's own host. A tenant administrator is refused in words, and nothing is
saved; the global administrator's center keeps its VNC password sealed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deskbroker.bootstrap import add_local_user
from tests.centers import local_host
from tests.helpers import ADMIN_PASSWORD, Api


@pytest.fixture
def state() -> Iterator[Path]:
    yield from local_host.state_dir()


def _tenant_admin(api: Api) -> Api:
    add_local_user(api.ctx, "boss-b", ADMIN_PASSWORD, role="tenant_admin", tenant_name="b")
    api.ctx.cache.invalidate()
    response = api.client.post(
        "/api/v1/auth/login", json={"username": "boss-b", "password": ADMIN_PASSWORD, "tenant": "b"}
    )
    assert response.status_code == 200, response.text
    return Api(api.client, api.ctx, response.json()["token"])


def test_a_tenant_admin_cannot_run_sessions_on_the_broker_host(api: Api, state: Path) -> None:
    boss = _tenant_admin(api)
    for params in (
        local_host.center_params(state),
        # Even the smallest center names a directory and runs the default command.
        {"state_dir": str(state)},
        {"state_dir": "/etc", "session_command": ["/bin/sh", "-c", "id"], "session_user": "root"},
    ):
        body = {"name": "borrowed", "kind": "local", "params": params}
        refused = boss.client.post("/api/v1/admin/centers", json=body, headers=boss.headers)
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        assert "only a global administrator" in detail and "state_dir" in detail
    assert api.get("centers?name=borrowed")["items"] == []
    assert not state.exists()  # nothing was written on the host either

    # A bad param is a 422 naming it, before any question of who asks.
    bad = {"name": "x", "kind": "local", "params": {"state_dir": "relative"}}
    answer = api.client.post("/api/v1/admin/centers", json=bad, headers=api.headers)
    assert answer.status_code == 422 and "state_dir" in answer.text

    made = api.post(
        "centers",
        {
            "name": "session-host",
            "kind": "local",
            "params": local_host.center_params(state),
            "secrets": {"vnc_password": local_host.VNC_PASSWORD},
        },
    )
    assert made["has_secrets"] and local_host.VNC_PASSWORD not in str(made)
    # The tenant admin sees no such center, and cannot change it into theirs.
    assert boss.get("centers?name=session-host")["items"] == []
    changed = boss.client.patch(
        f"/api/v1/admin/centers/{made['id']}",
        json={"params": {"state_dir": "/tmp/mine"}},
        headers=boss.headers,
    )
    assert changed.status_code in (403, 404), changed.text
