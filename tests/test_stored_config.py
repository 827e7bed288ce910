"""Stored configuration read back typed (domain/stored.py and the models that use it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from deskbroker.domain import plans
from deskbroker.domain.membership import FilterOp, filters_from_stored
from deskbroker.domain.plans import PlanAction, PlanKind, Trigger
from deskbroker.domain.provisioning import Provisioning, ProvisioningParameters, targets
from deskbroker.domain.rules import Conditions


def test_nothing_stored_reads_as_every_default() -> None:
    provisioning = Provisioning.from_stored(None)
    assert provisioning == Provisioning()
    assert not provisioning.enabled
    assert provisioning.parameters.name_template == "{POOL}-{SEQUENCE:3}"
    assert provisioning.parameters.sequence_start == 1
    assert provisioning.parameters.deletable is True


def test_writing_refuses_an_unknown_field_and_reading_drops_it() -> None:
    stored = {"enabled": True, "max_total": 3, "colour": "red", "schedules": []}
    with pytest.raises(ValidationError, match="colour"):
        Provisioning.model_validate(stored)
    read = Provisioning.from_stored(stored)
    assert read.enabled and read.max_total == 3
    assert "colour" not in read.model_dump()


def test_the_centers_parameters_stay_as_stored() -> None:
    stored = {"image": "img-1", "flavor": "m1.small", "user_data": "#!/bin/sh"}
    params = ProvisioningParameters.from_stored(stored)
    assert params.user_data == "#!/bin/sh"
    assert params.model_dump(mode="json", exclude_unset=True) == stored


def test_a_stored_zone_this_host_lacks_reads_as_utc_but_is_refused_on_write() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        Provisioning.model_validate({"timezone": "Mars/Olympus"})
    assert Provisioning.from_stored({"timezone": "Mars/Olympus"}).timezone == "UTC"


def test_schedule_windows_are_read_in_the_pools_zone() -> None:
    provisioning = Provisioning.from_stored(
        {
            "enabled": True,
            "timezone": "Asia/Tokyo",
            "min_unassigned": 1,
            "max_total": 2,
            "schedules": [
                {"days": [0], "start": "09:00", "end": "10:00", "min_unassigned": 5, "max_total": 9}
            ],
        }
    )
    # Monday 00:30 UTC is Monday 09:30 in Tokyo: inside the window.
    inside = targets(provisioning, datetime(2026, 1, 5, 0, 30, tzinfo=UTC))
    assert (inside.min_unassigned, inside.max_total, inside.window) == (
        5,
        9,
        "schedule 1 (09:00-10:00)",
    )
    outside = targets(provisioning, datetime(2026, 1, 5, 9, 30, tzinfo=UTC))
    assert (outside.min_unassigned, outside.max_total, outside.window) == (1, 2, None)


def test_a_rules_conditions_read_back_as_the_checks_they_make() -> None:
    cond = Conditions.from_stored(
        {
            "group": "staff",
            "attributes": [{"attribute": "dept", "op": "equals", "value": "lab"}],
            "window": {"days": [0, 1], "start": "08:00", "end": "18:00", "timezone": "UTC"},
            "later_field": 1,
        }
    )
    assert cond.group == "staff"
    (attribute,) = (a.rule() for a in cond.attributes)
    assert attribute.op is FilterOp.EQUALS and attribute.matches({"dept": "LAB"})
    assert cond.window is not None
    window = cond.window.time_window()
    assert window.contains(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    assert not window.contains(datetime(2026, 1, 7, 9, 0, tzinfo=UTC))


def test_stored_filters_become_the_filters_that_test_desktops() -> None:
    (only,) = filters_from_stored([{"attribute": "os", "op": "begins_with", "value": "ubu"}])
    assert only.value == "ubu" and only.matches({"os": "Ubuntu 24.04"})
    assert filters_from_stored(None) == ()


def test_plan_rules_read_back_typed_and_a_rule_this_version_cannot_read_is_left_out() -> None:
    power = plans.parse_rules(
        PlanKind.POWER,
        [
            {"event": "disconnect", "after_minutes": 15, "action": "suspend"},
            {"event": "logout", "after_minutes": 0, "action": "nothing"},  # sets no timer
            {"event": "eclipse", "after_minutes": 5, "action": "shutdown"},  # unknown event
            "not a rule",
        ],
    )
    assert [(r.trigger, r.after, r.action) for r in power] == [
        (Trigger.DISCONNECT, timedelta(minutes=15), PlanAction.SUSPEND)
    ]
    (release,) = plans.parse_rules(
        PlanKind.RELEASE,
        [{"event": "idle", "after_minutes": 10, "action": "release", "warn_minutes": 30}],
    )
    # The warning comes at most as early as the rule's own delay.
    assert release.warn == timedelta(minutes=10)
