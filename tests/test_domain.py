"""Pure domain rules: membership, assignment rules, name templates, states, estimates."""

from __future__ import annotations

from datetime import datetime, time

import pytest

from deskbroker.domain import tags
from deskbroker.domain.membership import (
    AttributeFilter,
    DesktopFacts,
    FilterOp,
    PoolDefinition,
    creates_cycle,
    members,
)
from deskbroker.domain.offers import next_release_interval, queue_estimate_s
from deskbroker.domain.rules import AssignmentRule, Identity, TimeWindow, decide
from deskbroker.domain.states import (
    POWER_TRANSITIONS,
    SESSION_TRANSITIONS,
    PowerState,
    SessionState,
    transition,
)
from deskbroker.errors import Conflict, InvalidInput

DESKTOPS = [
    DesktopFacts("d1", "c1", {"name": "eng-01", "os": "Windows 11", "gpu": "yes"}),
    DesktopFacts("d2", "c1", {"name": "eng-02", "os": "Ubuntu 24.04"}),
    DesktopFacts("d3", "c2", {"name": "sales-01", "os": "Windows 11"}),
]


def test_membership_by_center_filters_list_and_nesting() -> None:
    pools = [
        PoolDefinition("by-center", center_ids=frozenset({"c1"})),
        PoolDefinition(
            "windows", filters=(AttributeFilter("os", FilterOp.BEGINS_WITH, "windows"),)
        ),
        PoolDefinition("explicit", desktop_ids=frozenset({"d2", "d3"})),
        PoolDefinition(
            "gpu-windows",
            filters=(AttributeFilter("gpu", FilterOp.EXISTS),),
            parent_pool_id="windows",
        ),
        PoolDefinition("nested-empty", center_ids=frozenset({"c2"}), parent_pool_id="by-center"),
    ]
    result = members(pools, DESKTOPS)
    assert result["by-center"] == {"d1", "d2"}
    assert result["windows"] == {"d1", "d3"}
    assert result["explicit"] == {"d2", "d3"}
    assert result["gpu-windows"] == {"d1"}
    assert result["nested-empty"] == set()


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        (FilterOp.EQUALS, "eng-01", {"d1"}),
        (FilterOp.NOT_EQUALS, "eng-01", {"d2", "d3"}),
        (FilterOp.CONTAINS, "01", {"d1", "d3"}),
        (FilterOp.NOT_CONTAINS, "eng", {"d3"}),
        (FilterOp.ENDS_WITH, "-02", {"d2"}),
    ],
)
def test_filter_operators(op: FilterOp, value: str, expected: set[str]) -> None:
    pool = PoolDefinition("p", filters=(AttributeFilter("name", op, value),))
    assert members([pool], DESKTOPS)["p"] == expected


def test_nesting_cycles_are_detected() -> None:
    parents: dict[str, str | None] = {"a": None, "b": "a", "c": "b"}
    assert creates_cycle("a", "c", parents)
    assert not creates_cycle("c", "a", parents)
    assert creates_cycle("a", "a", parents)


def test_rules_first_match_wins() -> None:
    monday_9 = datetime(2026, 11, 23, 9, 0)
    saturday_9 = datetime(2026, 11, 28, 9, 0)
    office = TimeWindow(frozenset(range(5)), time(8), time(18))
    rules = [
        AssignmentRule("r-admins", "p-admin", role="tenant_admin", group="Admins"),
        AssignmentRule("r-office", "p-office", client_cidr="10.0.0.0/8", window=office),
        AssignmentRule(
            "r-contractor",
            "p-limited",
            attributes=(AttributeFilter("employeeType", FilterOp.EQUALS, "contractor"),),
        ),
        AssignmentRule("r-ou", "p-eng", ou="ou=eng,dc=example,dc=org"),
        AssignmentRule("r-default", None),
    ]
    admin = Identity("ann", groups=frozenset({"admins"}))
    worker = Identity("bob")
    contractor = Identity("cy", attributes={"employeeType": "Contractor"})
    engineer = Identity("di", ou="cn=di,ou=Eng,dc=example,dc=org")

    def decided(who: Identity, client: str | None, when: datetime) -> str:
        rule = decide(rules, who, client, when)
        assert rule is not None
        return rule.rule_id

    assert decided(admin, None, monday_9) == "r-admins"
    assert decided(worker, "10.2.3.4", monday_9) == "r-office"
    assert decided(worker, "10.2.3.4", saturday_9) == "r-default"
    assert decided(worker, "not-an-ip", monday_9) == "r-default"
    assert decided(contractor, "192.168.0.1", monday_9) == "r-contractor"
    assert decided(engineer, None, monday_9) == "r-ou"


def test_overnight_window_belongs_to_its_start_day() -> None:
    night = TimeWindow(frozenset({4}), time(22), time(6))  # Friday 22:00 - Saturday 06:00
    assert night.contains(datetime(2026, 11, 27, 23, 0))
    assert night.contains(datetime(2026, 11, 28, 5, 59))
    assert not night.contains(datetime(2026, 11, 28, 23, 0))


def test_name_templates() -> None:
    tags.validate_template("vdi-{POOL}-{SEQUENCE:3}")
    assert tags.render("vdi-{POOL}-{SEQUENCE:3}", {"POOL": "sales eu", "SEQUENCE": 7}) == (
        "vdi-sales-eu-007"
    )
    with pytest.raises(InvalidInput, match="unknown tag"):
        tags.validate_template("{NOPE}")
    with pytest.raises(InvalidInput, match="unbalanced"):
        tags.validate_template("vdi-{POOL")


def test_a_tag_without_a_value_never_leaves_an_empty_name() -> None:
    values: dict[str, str | int] = {"POOL": "sales", "SEQUENCE": 7}
    assert tags.render("{USER}", {**values, "USER": "alice@corp"}) == "alice-corp"
    # Built before anyone asked: no user, so the pool's default name, not "".
    assert tags.render("{USER}", values) == "sales-007"
    assert tags.render("{USER}", {**values, "USER": ""}) == "sales-007"
    assert tags.render("vdi-{USER}-{SEQUENCE:2}", values) == "vdi-07"
    assert tags.render("{USER}-{TENANT}", values) == "sales-007"
    assert tags.render("---", values) == "sales-007"


def test_state_tables() -> None:
    assert transition(POWER_TRANSITIONS, PowerState.STOPPED, PowerState.RUNNING) == "running"
    with pytest.raises(Conflict, match="cannot go from deleted to running"):
        transition(POWER_TRANSITIONS, PowerState.DELETED, PowerState.RUNNING)
    with pytest.raises(Conflict):
        transition(SESSION_TRANSITIONS, SessionState.LOGGED_OUT, SessionState.CONNECTED)
    assert all(state in POWER_TRANSITIONS for state in PowerState)
    assert all(state in SESSION_TRANSITIONS for state in SessionState)


def test_queue_estimates() -> None:
    assert queue_estimate_s(3, 60.0) == 180
    assert queue_estimate_s(1, None) == 300
    assert next_release_interval(None, 100.0) == 100.0
    assert next_release_interval(100.0, 200.0) == pytest.approx(120.0)
