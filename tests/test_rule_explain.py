"""Assignment rules explained: every operator, its reason in words, and never a
disagreement between ``matches`` (the login path) and ``explain`` (the admin's why)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time

from deskbroker.domain.membership import AttributeFilter, FilterOp
from deskbroker.domain.rules import AssignmentRule, Identity, TimeWindow, decide, explain

MON_08 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday
SAT_08 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
OFFICE = TimeWindow(frozenset(range(5)), time(7), time(19))
NIGHT = TimeWindow(frozenset({4}), time(22), time(6))  # Friday night into Saturday


def attr(name: str, op: FilterOp, value: str = "") -> tuple[AttributeFilter, ...]:
    return (AttributeFilter(name, op, value),)


RULES = [
    AssignmentRule("r-eng", "p-eng", group="Engineering", name="engineers"),
    AssignmentRule("r-sales", "p-sales", attributes=attr("department", FilterOp.EQUALS, "Sales")),
    AssignmentRule(
        "r-not-temp", "p-staff", attributes=attr("employeeType", FilterOp.NOT_EQUALS, "temp")
    ),
    AssignmentRule("r-mgr", "p-mgr", attributes=attr("title", FilterOp.CONTAINS, "manager")),
    AssignmentRule("r-lab", "p-lab", attributes=attr("host", FilterOp.BEGINS_WITH, "lab-")),
    AssignmentRule("r-edu", "p-edu", attributes=attr("mail", FilterOp.ENDS_WITH, "@uni.example")),
    AssignmentRule("r-ou", "p-ou", ou="OU=Staff, DC=example,DC=org"),
    AssignmentRule("r-net", "p-net", client_cidr="10.1.0.0/16", window=OFFICE),
    AssignmentRule("r-night", "p-night", window=NIGHT),
    AssignmentRule("r-default", "p-default", role="user", name="everyone"),
]


def verdict_of(who: Identity, client: str | None, moment: datetime) -> tuple[str, dict[str, str]]:
    verdicts, deciding = explain(RULES, who, client, moment)
    assert deciding is not None
    return deciding.rule_id, {v.rule.rule_id: v.reason for v in verdicts}


def test_each_operator_decides_with_its_reason_in_words() -> None:
    temp = {"employeeType": "temp"}
    nobody = Identity("zed", attributes=temp)
    rule, reasons = verdict_of(nobody, "10.9.0.1", SAT_08)
    assert rule == "r-default"
    assert reasons["r-eng"] == "group 'Engineering' not among the user's groups"
    assert reasons["r-sales"] == "attribute 'department' is not set, so it does not equal 'Sales'"
    assert reasons["r-not-temp"] == "attribute 'employeeType' ('temp') equals 'temp'"
    assert reasons["r-mgr"] == "attribute 'title' is not set, so it does not contain 'manager'"
    assert reasons["r-lab"] == "attribute 'host' is not set, so it does not begin with 'lab-'"
    assert reasons["r-ou"] == "the user has no OU, so is not within 'OU=Staff, DC=example,DC=org'"
    assert reasons["r-net"] == "10.9.0.1 not in 10.1.0.0/16"
    assert reasons["r-night"] == "08:00 Sat outside Fri 22:00-06:00"
    assert reasons["r-default"] == "the default rule: it has no conditions"

    def decided(**identity: object) -> str:
        who = Identity("u", **{"attributes": temp, **identity})  # type: ignore[arg-type]
        return verdict_of(who, "10.1.2.3", SAT_08)[0]

    assert decided(groups=frozenset({"engineering"})) == "r-eng"  # case does not matter
    assert decided(attributes={"department": "sales", **temp}) == "r-sales"
    assert decided(attributes={"employeeType": "staff"}) == "r-not-temp"
    assert decided(attributes={"title": "Sales Manager", **temp}) == "r-mgr"
    assert decided(attributes={"host": "lab-17", **temp}) == "r-lab"
    assert decided(attributes={"mail": "a@uni.example", **temp}) == "r-edu"
    assert decided(ou="ou=staff,dc=example,dc=org") == "r-ou"
    assert decided(ou="ou=eng,ou=Staff,dc=example,dc=org") == "r-ou"  # below the OU
    # Whole components only: "ou=xStaff" is not within "ou=Staff".
    assert decided(ou="ou=xStaff,dc=example,dc=org") == "r-default"

    _, failed = verdict_of(Identity("u", attributes={"title": "Clerk", **temp}), None, SAT_08)
    assert failed["r-mgr"] == "attribute 'title' ('Clerk') does not contain 'manager'"
    assert failed["r-net"] == "no client address is known, so none is in 10.1.0.0/16"


def test_network_and_time_window_including_overnight_wrap() -> None:
    who = Identity("u", attributes={"employeeType": "temp"})
    assert verdict_of(who, "10.1.2.3", MON_08)[0] == "r-net"
    rule, reasons = verdict_of(who, "10.1.2.3", SAT_08)
    assert rule == "r-default"
    assert reasons["r-net"] == "08:00 Sat outside Mon-Fri 07:00-19:00"
    # The OU check passes the CIDR first; the window is the first condition that fails.
    verdicts, _ = explain(RULES, who, "10.1.2.3", MON_08)
    net = next(v for v in verdicts if v.rule.rule_id == "r-net")
    assert [c.words for c in net.checks] == [
        "10.1.2.3 in 10.1.0.0/16",
        "08:00 Mon inside Mon-Fri 07:00-19:00",
    ]
    assert net.reason == "10.1.2.3 in 10.1.0.0/16; 08:00 Mon inside Mon-Fri 07:00-19:00"
    # Friday 22:00 to Saturday 06:00 belongs to Friday.
    assert verdict_of(who, None, datetime(2026, 11, 27, 23, 30, tzinfo=UTC))[0] == "r-night"
    assert verdict_of(who, None, datetime(2026, 11, 28, 5, 59, tzinfo=UTC))[0] == "r-night"
    assert verdict_of(who, None, datetime(2026, 11, 28, 6, 0, tzinfo=UTC))[0] == "r-default"
    assert verdict_of(who, None, datetime(2026, 11, 27, 5, 0, tzinfo=UTC))[0] == "r-default"
    # A client seen through an IPv6 socket as ::ffff:10.1.2.3 is 10.1.2.3.
    assert verdict_of(who, "::ffff:10.1.2.3", MON_08)[0] == "r-net"


def test_a_window_is_read_in_its_own_time_zone() -> None:
    paris = TimeWindow(frozenset(range(5)), time(7), time(19), zone="Europe/Paris")
    rule = AssignmentRule("r", "p", window=paris)
    who = Identity("u")
    # 06:30 UTC on a Monday in November is 07:30 in Paris.
    early = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)
    assert rule.matches(who, None, early)
    assert rule.explain(who, None, early).reason == (
        "07:30 Mon inside Mon-Fri 07:00-19:00 Europe/Paris"
    )
    assert not rule.matches(who, None, datetime(2026, 11, 23, 18, 30, tzinfo=UTC))


def test_a_cidr_written_with_host_bits_still_matches() -> None:
    # The admin API accepts 10.1.2.3/16 (strict=False); evaluation must read it the same way.
    rule = AssignmentRule("r", "p", client_cidr="10.1.2.3/16")
    assert rule.matches(Identity("u"), "10.1.200.1", MON_08)


def test_matches_and_explain_never_disagree() -> None:
    identities = [
        Identity("a"),
        Identity("b", groups=frozenset({"Engineering"})),
        Identity("c", attributes={"department": "Sales", "employeeType": "temp"}),
        Identity("d", attributes={"title": "manager", "host": "lab-1", "mail": "x@uni.example"}),
        Identity("e", ou="ou=staff,dc=example,dc=org", attributes={"employeeType": "temp"}),
    ]
    clients = [None, "10.1.2.3", "10.2.0.1", "nonsense", "::ffff:10.1.0.9"]
    moments = [MON_08, SAT_08, datetime(2026, 11, 27, 23, 0, tzinfo=UTC)]
    for who, client, moment in itertools.product(identities, clients, moments):
        verdicts, deciding = explain(RULES, who, client, moment)
        assert deciding is decide(RULES, who, client, moment)
        for verdict in verdicts:
            assert verdict.matched == verdict.rule.matches(who, client, moment)
            assert verdict.matched == all(c.ok for c in verdict.checks)
