"""Two agents of one tenant enrolling at once, each to wait for an administrator, with
room for one more waiting enrolment: one waits, the other is refused with the cap's
error. On PostgreSQL each statement sees what had committed when it began: both counted
the tenant's waiting enrolments before either committed, and both were left waiting
past the cap. The count is now taken by one enrolment of the tenant at a time. On
SQLite the one writer serialises the two; the test holds there too."""

from __future__ import annotations

import httpx
import pytest

from deskbroker.config import Settings
from deskbroker.services import enrolments
from tests.desktop_agent import enrol_by_key
from tests.helpers import Api
from tests.races import Seam, while_held


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"agent_pending_enrol_max": 1})


def test_two_enrolments_counted_at_once_leave_no_more_waiting_than_the_cap(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = api.post("enrolment-keys", {"name": "golden"})
    # Just after an enrolment counted what waits (the app runs the route on a thread of
    # its own: the first to count is held).
    seam = Seam(first_only=True)
    seam.after(monkeypatch, enrolments.rows, "waiting_count")
    answers: dict[str, httpx.Response] = {}

    def enrol(who: str, address: str) -> None:
        answers[who] = enrol_by_key(api, made["key"], instance="unknown", addresses=[address])

    # The second waits for the first's count to commit (the tenant's waiting enrolments
    # are counted one enrolment at a time on PostgreSQL; the one writer on SQLite).
    while_held(
        seam,
        lambda: enrol("held", "192.0.2.70"),
        lambda: enrol("other", "192.0.2.71"),
        other_ends_first=False,
        other_waits_s=1,
    )

    codes = {who: a.status_code for who, a in answers.items()}
    assert codes == {"held": 202, "other": 409}, {who: a.text for who, a in answers.items()}
    assert "1 enrolments wait for an administrator" in answers["other"].json()["detail"]
    waiting = api.get("pending-enrolments")["items"]
    assert [w["state"] for w in waiting] == ["pending"]
