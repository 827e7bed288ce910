"""A key revoked while an agent enrols with it: what that enrolment leaves waiting is
denied with the key, never left pending under a revoked key. The enrolment share-locks
the key and the revocation locks it for update, so the revocation waits for it and then
sees what it left. Read without the locks (on PostgreSQL each statement sees its own
moment), the revocation denied what had committed and the enrolment's pending outlived
it. On SQLite the one writer serialises the two; the test holds there too."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from deskbroker.services import enrolments
from tests.desktop_agent import enrol_by_key, poll_enrolment
from tests.helpers import Api


def test_an_enrolment_under_way_when_its_key_is_revoked_is_denied_with_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.seed_pool(1)
    made = api.post("enrolment-keys", {"name": "golden"})
    read, go_on = threading.Event(), threading.Event()
    real = enrolments.rows.matching_desktops

    def matching_desktops(*args: Any) -> Any:
        # Just after the enrolment read the key: hold it there (the app runs the route
        # on a thread of its own; the enrolment is the only caller here).
        found = real(*args)
        read.set()
        assert go_on.wait(30), "never told to go on"
        return found

    monkeypatch.setattr(enrolments.rows, "matching_desktops", matching_desktops)
    answers: dict[str, httpx.Response] = {}
    enrolling = threading.Thread(
        target=lambda: answers.update(
            enrol=enrol_by_key(api, made["key"], instance="unknown", addresses=["192.0.2.70"])
        )
    )
    enrolling.start()
    assert read.wait(30)
    revoking = threading.Thread(
        target=lambda: answers.update(
            revoke=api.client.delete(
                f"/api/v1/admin/enrolment-keys/{made['id']}", headers=api.headers
            )
        )
    )
    revoking.start()
    revoking.join(1.0)  # a revocation that did not wait would be done by now
    go_on.set()
    enrolling.join(30)
    revoking.join(30)
    assert not enrolling.is_alive() and not revoking.is_alive()

    assert answers["revoke"].status_code in (200, 204), answers["revoke"].text
    held = answers["enrol"]
    assert held.status_code == 202, held.text
    refused = poll_enrolment(api, held.json()["poll_handle"])
    assert refused.status_code == 403 and "was revoked" in refused.json()["detail"]
    [waiting] = api.get("pending-enrolments")["items"]
    assert waiting["state"] == "denied"
