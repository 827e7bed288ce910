"""One owner per state machine: the tables, the moves through them, one free desktop."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from deskbroker.domain.states import (
    AGENT_TRANSITIONS,
    MACHINES,
    POWER_ACTIONS,
    POWER_TRANSITIONS,
    PROVISIONING_TRANSITIONS,
    START_ON_CONNECT,
    Availability,
    PowerAction,
    PowerState,
    ProvisioningState,
    check_action,
    from_any,
    is_coming_free,
    is_free,
    observe,
    settle,
    transition,
)
from deskbroker.engine.provisioner import pool_counts
from deskbroker.errors import Conflict
from deskbroker.services.context import BrokerContext
from deskbroker.store import claims
from deskbroker.store.tables import Desktop, User
from tests.helpers import Api

P = PowerState
T = ProvisioningState


def test_every_machine_has_a_row_for_every_state_and_names_both_in_a_refusal() -> None:
    for states, table in MACHINES.values():
        assert set(table) == set(states)
        assert all(set(nxt) <= set(states) for nxt in table.values())
    with pytest.raises(Conflict, match="desktop lab-001 cannot go from deleted to running"):
        transition(POWER_TRANSITIONS, P.DELETED, P.RUNNING, subject="desktop lab-001")
    with pytest.raises(Conflict, match="task lab-002 cannot go from ready to requested"):
        transition(PROVISIONING_TRANSITIONS, T.READY, T.REQUESTED, subject="task lab-002")


def test_a_scan_records_a_surprise_as_unknown_and_an_action_keeps_a_deleted_desktop() -> None:
    assert observe("stopped", P.RUNNING) is P.RUNNING
    # Deleting -> running is not in the table: the surprise shows as unknown first.
    assert observe("deleting", P.RUNNING) is P.UNKNOWN
    assert observe("unknown", P.RUNNING) is P.RUNNING
    assert observe("a value from an older broker", P.STOPPED) is P.STOPPED
    # Deleted is final for every writer; a machine the cloud still reports comes back as
    # unknown rather than failing the scan.
    assert observe("deleted", P.RUNNING) is P.UNKNOWN
    assert settle("running", P.STOPPED) is P.STOPPED
    assert settle("deleted", P.RUNNING) is P.DELETED


def test_every_power_action_leads_where_the_power_table_allows() -> None:
    assert set(POWER_ACTIONS) == set(PowerAction)
    for action, rule in POWER_ACTIONS.items():
        for was in rule.allowed_from:
            # What an action records is a move the power table allows (or no move).
            assert rule.leads_to == was or rule.leads_to in POWER_TRANSITIONS[was], (action, was)
            assert check_action(was.value, action, subject="desktop d") is was
        refused = set(PowerState) - rule.allowed_from
        assert PowerState.DELETED in refused
        for was in refused:
            with pytest.raises(Conflict, match=f"desktop d is {was.value}: it cannot"):
                check_action(was.value, action, subject="desktop d")
    for state, action in START_ON_CONNECT.items():
        assert state in POWER_ACTIONS[action].allowed_from
        assert POWER_ACTIONS[action].leads_to is PowerState.RUNNING


def test_a_bulk_write_is_checked_against_every_state_it_may_touch() -> None:
    assert from_any(POWER_TRANSITIONS, P.DELETED) is P.DELETED
    assert from_any(POWER_TRANSITIONS, P.DELETING, (P.RUNNING, P.STOPPED)) is P.DELETING
    with pytest.raises(Conflict, match="cannot go from deleted to deleting"):
        from_any(POWER_TRANSITIONS, P.DELETING)


def test_retries_and_cancellation_are_edges_of_the_task_table() -> None:
    for state in (T.CREATING, T.WAITING, T.ADDRESSING):
        assert transition(PROVISIONING_TRANSITIONS, state, T.REQUESTED) is T.REQUESTED
    assert transition(PROVISIONING_TRANSITIONS, T.REQUESTED, T.CANCELLED) is T.CANCELLED
    for done in (T.READY, T.FAILED, T.CANCELLED):
        assert PROVISIONING_TRANSITIONS[done] == frozenset()


def test_an_agent_is_lost_and_found_through_its_table() -> None:
    from deskbroker.domain.states import AgentState as A

    assert transition(AGENT_TRANSITIONS, A.RUNNING, A.LOST) is A.LOST
    assert transition(AGENT_TRANSITIONS, A.LOST, A.RUNNING) is A.RUNNING
    with pytest.raises(Conflict, match="cannot go from running to unknown"):
        transition(AGENT_TRANSITIONS, A.RUNNING, A.UNKNOWN)


def test_claim_provisioner_and_pool_status_agree_on_free_desktops(
    ctx: BrokerContext, api: Api
) -> None:
    """A pool with a desktop in every power state, availability and holder: the login
    claim, the provisioner's counts and the admin pool status count the same free ones."""
    kinds = list(itertools.product(PowerState, Availability, (False, True)))
    ids = api.seed_pool(len(kinds), name="every", users=1)
    pool_id = ids["pool"]
    with ctx.db.write() as session:
        holder = session.scalars(select(User.id).where(User.username == "user0")).one()
        desktops = session.scalars(
            select(Desktop).where(Desktop.center_id == ids["center"]).order_by(Desktop.name)
        ).all()
        assert len(desktops) == len(kinds)
        for desktop, (power, availability, assigned) in zip(desktops, kinds, strict=True):
            desktop.power_state = power.value
            desktop.availability = availability.value
            desktop.assigned_user_id = holder if assigned else None
            desktop.assigned_pool_id = pool_id if assigned else None
    free = sum(is_free(p.value, a.value, held) for p, a, held in kinds)

    def counted(starts_unavailable: bool) -> int:
        return sum(
            is_free(p.value, a.value, held)
            or is_coming_free(p.value, a.value, held, starts_unavailable)
            for p, a, held in kinds
        )

    assert free == 4  # running, stopped, suspended, unknown: available and unassigned

    status = api.get(f"pools/{pool_id}/status")["counts"]
    with ctx.db.read() as session:
        claimable = claims.free_desktops(session, [pool_id])[pool_id]
        counts = pool_counts(session, pool_id)
        counts_held_back = pool_counts(session, pool_id, starts_unavailable=True)
    assert status["available"] == claimable == free
    # The provisioner adds the desktops being built (and, held back, the finished ones).
    assert counts.unassigned == counted(False) == free + 2
    assert counts_held_back.unassigned == counted(True) == 2 * free + 2


def test_the_documented_tables_are_the_code_s(tmp_path: Path) -> None:
    """``make lint`` runs the generator with --check: it passes on the committed document
    and fails once a table there no longer matches the code."""
    root = Path(__file__).resolve().parent.parent
    script = [sys.executable, str(root / "scripts" / "gen_state_docs.py"), "--check"]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    assert subprocess.run(script, env=env, check=False).returncode == 0
    stale = tmp_path / "architecture.md"
    text = (root / "docs" / "architecture.md").read_text()
    stale.write_text(text.replace("| `deleted` | (final) |", "| `deleted` | `running` |"))
    assert stale.read_text() != text
    refused = subprocess.run([*script, "--output", str(stale)], env=env, check=False)
    assert refused.returncode == 1
