from __future__ import annotations

from tests.helpers import Api


def test_login_assigns_and_connects(api: Api) -> None:
    api.seed_pool(2, users=3, ports={"vnc": 5901})
    first = api.login("user0")
    assert first["offers"][0]["status"] == "assigned"
    desktop = first["offers"][0]["desktop"]
    headers = {"Authorization": f"Bearer {first['token']}"}
    r = api.client.post(
        f"/api/v1/client/desktops/{desktop['id']}/connect",
        json={"protocol": "vnc"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["port"] == 5901
    assert "Host=" + desktop["address"] in r.json()["content"]
    api.login("user1")
    third = api.login("user2")
    assert third["offers"][0]["status"] == "queued"
    assert third["offers"][0]["position"] == 1
