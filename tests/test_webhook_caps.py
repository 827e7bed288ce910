"""One tenant's webhooks must not flood the fan-out every tenant shares: a tenant has at
most ``webhooks_per_tenant`` of them, and a webhook's test event is accepted at most once
per ten seconds (``services/webhook_limits.py``)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from deskbroker.config import Settings
from deskbroker.errors import TooManyRequests
from deskbroker.services.webhook_limits import TestPace
from deskbroker.store.tables import Event, Webhook
from tests.helpers import Api, tenant_admin_of

CAP = 3
SECRET = "receiver-secret-0123456789"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhooks_per_tenant": CAP})


def _body(name: str, **extra: str) -> dict[str, object]:
    return {
        "name": name,
        "url": "http://example.org/h",
        "kinds": ["login"],
        "secret": SECRET,
        **extra,
    }


def _stored(api: Api, tenant_id: str) -> int:
    with api.ctx.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)
            )
            or 0
        )


def _test_events(api: Api) -> int:
    with api.ctx.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Event).where(Event.kind == "webhook.test")
            )
            or 0
        )


def test_a_tenant_gets_no_more_webhooks_than_the_cap(api: Api) -> None:
    acme = tenant_admin_of(api, "acme", "acme-boss")
    made = [acme.post("webhooks", _body(f"hook{i}")) for i in range(CAP)]
    acme_id = made[0]["tenant_id"]
    refused = acme.post("webhooks", _body("one-too-many"), status=409)
    assert refused["detail"] == (
        f"this tenant already has {CAP} webhooks (DESKBROKER_WEBHOOKS_PER_TENANT); delete one first"
    )
    assert refused["limit"] == CAP and refused["used"] == CAP
    # Nothing written: no row, no audit event of a create.
    assert _stored(api, acme_id) == CAP
    assert acme.get("webhooks?name=one-too-many")["total"] == 0
    # A global administrator aiming one at this tenant counts against it too.
    refused = api.post("webhooks", _body("from-above", tenant_id=acme_id), status=409)
    assert "already has 3 webhooks" in refused["detail"]
    assert _stored(api, acme_id) == CAP
    # Another tenant (the global admin's own) still makes its own.
    own = api.post("webhooks", _body("own"))
    assert own["tenant_id"] != acme_id
    # Deleting one frees a place; a change to one that exists is never counted.
    acme.delete(f"webhooks/{made[0]['id']}")
    again = acme.post("webhooks", _body("again"))
    assert again["tenant_id"] == acme_id
    assert acme.patch(f"webhooks/{again['id']}", {"kinds": ["session"]})["kinds"] == ["session"]
    acme.post("webhooks", _body("still-too-many"), status=409)
    assert _stored(api, acme_id) == CAP


def test_a_lowered_cap_says_how_many_must_go(api: Api) -> None:
    for i in range(CAP):
        api.post("webhooks", _body(f"hook{i}"))
    api.ctx.settings.webhooks_per_tenant = 1  # lowered after they were made
    refused = api.post("webhooks", _body("more"), status=409)
    assert refused["detail"] == (
        "this tenant already has 3 webhooks (DESKBROKER_WEBHOOKS_PER_TENANT); "
        "delete 3 first (the limit is 1)"
    )


def test_a_second_test_event_within_ten_seconds_is_refused(api: Api) -> None:
    hook = api.post("webhooks", _body("siem"))
    other = api.post("webhooks", _body("other"))
    api.post(f"webhooks/{hook['id']}/test", {}, status=202)
    response = api.client.post(
        f"/api/v1/admin/webhooks/{hook['id']}/test", json={}, headers=api.headers
    )
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    detail = response.json()["detail"]
    assert "a test event for webhook siem was queued less than 10 seconds ago" in detail
    assert "one test event per webhook is accepted every 10 seconds" in detail
    assert _test_events(api) == 1  # the refused one wrote nothing
    # Another webhook has a pace of its own.
    api.post(f"webhooks/{other['id']}/test", {}, status=202)
    assert _test_events(api) == 2


def test_a_refused_caller_spends_no_turn(api: Api) -> None:
    hook = api.post("webhooks", _body("siem"))
    acme = tenant_admin_of(api, "acme", "acme-boss")
    acme.post(f"webhooks/{hook['id']}/test", {}, status=404)  # not theirs to see
    api.post(f"webhooks/{hook['id']}/test", {}, status=202)
    api.post("webhooks/no-such-webhook/test", {}, status=404)


def test_the_pace_lets_one_through_per_interval_and_remembers_little() -> None:
    now = [100.0]
    pace = TestPace(interval_s=10.0, max_remembered=3, clock=lambda: now[0])
    pace.take("a", "a")
    now[0] += 9.5
    with pytest.raises(TooManyRequests) as refused:
        pace.take("a", "a")
    assert refused.value.extra["retry_after"] == 1
    now[0] += 0.5
    pace.take("a", "a")  # ten seconds on: accepted again
    # Stale entries are forgotten as new ones come; at most max_remembered are kept.
    for i in range(10):
        pace.take(f"hook{i}", "h")
        assert len(pace) <= 3
    now[0] += 10.0
    pace.take("late", "late")
    assert len(pace) == 1
