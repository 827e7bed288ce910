"""A tenant's requests that wait on its clouds share the tenant's cap with its
directories: once a tenant holds that many, its next catalog listing, power action or
start is refused at once (503, Retry-After, in words) instead of taking another thread."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from deskbroker.config import Settings
from tests.helpers import Api, wait_until
from tests.tarpit import silent_center, tarpit

# Long enough that the first listing still holds the tenant's slot when the second comes,
# even on a machine busy with the rest of the suite (the first holds it about this long,
# the center's deadline). At 3 s, in a full run of the suite, the second was let through
# to the silent cloud: the test's thread had asked only after the first had ended.
TIMEOUT_S = 6.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"tenant_max_concurrent": 1})


def test_a_tenant_waiting_on_a_silent_cloud_is_refused_more_at_once(api: Api) -> None:
    desktop = _one_desktop(api)
    with tarpit() as pit:
        center = silent_center(api, pit, timeout_s=TIMEOUT_S)
        path = f"/api/v1/admin/centers/{center['id']}/catalog"
        first: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(api.client.get(path, headers=api.headers))
        )
        waiting.start()
        wait_until(
            lambda: pit.accepted,
            "the first listing to be in the cloud",
            timeout_s=5,
            interval_s=0.02,
        )
        started = time.perf_counter()
        second = api.client.get(path, headers=api.headers)
        took = time.perf_counter() - started
        still_waiting = waiting.is_alive()
        # A probe knocks on the desktop's ports from a request thread too: it waits its
        # turn with the tenant's clouds.
        probe = api.client.post(f"/api/v1/admin/desktops/{desktop}/probe", headers=api.headers)
        waiting.join(4 * TIMEOUT_S)
    assert second.status_code == 503 and took < 0.5, (took, still_waiting, second.text)
    assert second.json()["reason"] == "tenant_busy"
    assert second.headers["Retry-After"] == "5"
    assert "catalog" in second.json()["detail"]
    assert first and first[0].status_code != 200  # the silent cloud failed it in time
    assert probe.status_code == 503 and probe.json()["reason"] == "tenant_busy", probe.text
    assert "probe desktop" in probe.json()["detail"]
    # Once the slot is free the probe runs (its ports are closed: not reachable).
    again = api.post(f"desktops/{desktop}/probe", {}, status=200)
    assert again["reachable"] is False


def _one_desktop(api: Api) -> str:
    api.seed_pool(1, address_base="127.0.9.")
    [desktop] = api.get("desktops")["items"]
    return str(desktop["id"])
