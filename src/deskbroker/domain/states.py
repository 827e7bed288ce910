"""State enums with their transition tables.

Every state machine (desktop power, availability, agent, session, provisioning task) has
one table here, and every writer moves a state through ``transition`` (or, where the
infrastructure has the last word, ``observe`` and ``settle``, which read the same table).
The power machine also has an action table (``POWER_ACTIONS``, ``START_ON_CONNECT``):
which power actions may be asked of a desktop in which state, and what they lead to.
``scripts/gen_state_docs.py`` writes these tables into docs/architecture.md."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from deskbroker.errors import Conflict


class PowerState(StrEnum):
    UNKNOWN = "unknown"
    BUILDING = "building"
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    ERROR = "error"
    DELETING = "deleting"
    DELETED = "deleted"


# What the broker may ask a center to do to a machine's power. (A comment, not a
# docstring: the API reference shows an enum's docstring.)
class PowerAction(StrEnum):
    START = "start"
    STOP = "stop"
    SUSPEND = "suspend"
    RESUME = "resume"
    REBOOT = "reboot"
    REBOOT_HARD = "reboot_hard"


class Availability(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class AgentState(StrEnum):
    UNKNOWN = "unknown"
    RUNNING = "running"
    LOST = "lost"


class EnrolmentState(StrEnum):
    """An agent that enrolled with a tenant's enrolment key and matched no desktop row:
    it waits for an administrator (``pending_enrolments.state``)."""

    PENDING = "pending"
    APPROVED = "approved"  # an administrator named its desktop; the agent has not polled
    COLLECTED = "collected"  # the agent took its credential (once)
    DENIED = "denied"
    EXPIRED = "expired"


class SessionState(StrEnum):
    LOGGED_IN = "logged_in"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOCKED = "locked"
    IDLE = "idle"
    LOGGED_OUT = "logged_out"


class ProvisioningState(StrEnum):
    REQUESTED = "requested"
    CREATING = "creating"
    WAITING = "waiting"
    ADDRESSING = "addressing"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


P = PowerState
# What the infrastructure may report next; a scan that sees anything else records
# the desktop as ``unknown`` first, so a surprise is visible rather than silent. A
# running, stopped or failed machine goes back to ``building`` when it is rebuilt from
# a new image (a rollout).
POWER_TRANSITIONS: dict[PowerState, frozenset[PowerState]] = {
    P.UNKNOWN: frozenset(set(P) - {P.UNKNOWN}),
    P.BUILDING: frozenset({P.RUNNING, P.STOPPED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.RUNNING: frozenset(
        {P.BUILDING, P.STOPPED, P.SUSPENDED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}
    ),
    P.STOPPED: frozenset({P.BUILDING, P.RUNNING, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.SUSPENDED: frozenset({P.RUNNING, P.STOPPED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.ERROR: frozenset({P.BUILDING, P.RUNNING, P.STOPPED, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.DELETING: frozenset({P.DELETED, P.ERROR, P.UNKNOWN}),
    P.DELETED: frozenset(),
}


@dataclass(frozen=True)
class ActionRule:
    """When a power action may be asked, and what the broker records once it was done."""

    # The states it makes sense from (``unknown``: let the center decide).
    allowed_from: frozenset[PowerState]
    # The state recorded once the center accepted it (the next scan corrects it).
    leads_to: PowerState
    # It takes the desktop away from whoever is working on it.
    disruptive: bool


POWER_ACTIONS: dict[PowerAction, ActionRule] = {
    PowerAction.START: ActionRule(frozenset({P.STOPPED, P.UNKNOWN, P.ERROR}), P.RUNNING, False),
    PowerAction.RESUME: ActionRule(frozenset({P.SUSPENDED, P.UNKNOWN}), P.RUNNING, False),
    PowerAction.STOP: ActionRule(frozenset({P.RUNNING, P.SUSPENDED, P.UNKNOWN}), P.STOPPED, True),
    PowerAction.SUSPEND: ActionRule(frozenset({P.RUNNING, P.UNKNOWN}), P.SUSPENDED, True),
    PowerAction.REBOOT: ActionRule(frozenset({P.RUNNING, P.UNKNOWN}), P.RUNNING, True),
    PowerAction.REBOOT_HARD: ActionRule(
        frozenset({P.RUNNING, P.ERROR, P.UNKNOWN}), P.RUNNING, True
    ),
}
# A desktop in one of these states is started when its user connects, by this action.
START_ON_CONNECT: dict[PowerState, PowerAction] = {
    P.STOPPED: PowerAction.START,
    P.SUSPENDED: PowerAction.RESUME,
}


def check_action(current: str, action: PowerAction, *, subject: str) -> PowerState:
    """The desktop's power state, when ``action`` may be asked of it; ``Conflict`` in
    words otherwise ("desktop lab-001 is deleted: it cannot start")."""
    was = power_state(current)
    if was not in POWER_ACTIONS[action].allowed_from:
        raise Conflict(f"{subject} is {was.value}: it cannot {action.value}")
    return was


S = SessionState
SESSION_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.LOGGED_IN: frozenset({S.CONNECTED, S.DISCONNECTED, S.LOCKED, S.IDLE, S.LOGGED_OUT}),
    S.CONNECTED: frozenset({S.DISCONNECTED, S.LOCKED, S.IDLE, S.LOGGED_OUT}),
    S.DISCONNECTED: frozenset({S.CONNECTED, S.LOGGED_OUT, S.IDLE}),
    S.LOCKED: frozenset({S.CONNECTED, S.DISCONNECTED, S.LOGGED_OUT, S.IDLE}),
    S.IDLE: frozenset({S.CONNECTED, S.DISCONNECTED, S.LOCKED, S.LOGGED_OUT}),
    S.LOGGED_OUT: frozenset(),
}

T = ProvisioningState
PROVISIONING_TRANSITIONS: dict[ProvisioningState, frozenset[ProvisioningState]] = {
    T.REQUESTED: frozenset({T.CREATING, T.CANCELLED, T.FAILED}),
    # Back to ``requested`` is a retry: a build that never reached the cloud (quota, a
    # lost lease) or a failed attempt cleaned up for another try.
    T.CREATING: frozenset({T.REQUESTED, T.WAITING, T.FAILED, T.CANCELLED}),
    T.WAITING: frozenset({T.REQUESTED, T.ADDRESSING, T.READY, T.FAILED, T.CANCELLED}),
    T.ADDRESSING: frozenset({T.REQUESTED, T.READY, T.FAILED, T.CANCELLED}),
    T.READY: frozenset(),
    T.FAILED: frozenset(),
    T.CANCELLED: frozenset(),
}

AVAILABILITY_TRANSITIONS: dict[Availability, frozenset[Availability]] = {
    Availability.AVAILABLE: frozenset({Availability.UNAVAILABLE}),
    Availability.UNAVAILABLE: frozenset({Availability.AVAILABLE}),
}

A = AgentState
# ``lost``: the machine under a running agent was seen not running (``agent_after_power``);
# the agent's next report brings it back to ``running``.
AGENT_TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    A.UNKNOWN: frozenset({A.RUNNING, A.LOST}),
    A.RUNNING: frozenset({A.LOST}),
    A.LOST: frozenset({A.RUNNING}),
}

EN = EnrolmentState
# A decision is final: an approval is collected once (its credential is shown once), a
# denial stands, and either lapses unless acted on within the pending lifetime.
ENROLMENT_TRANSITIONS: dict[EnrolmentState, frozenset[EnrolmentState]] = {
    EN.PENDING: frozenset({EN.APPROVED, EN.DENIED, EN.EXPIRED}),
    EN.APPROVED: frozenset({EN.COLLECTED, EN.DENIED, EN.EXPIRED}),
    EN.COLLECTED: frozenset(),
    EN.DENIED: frozenset(),
    EN.EXPIRED: frozenset(),
}


class RolloutState(StrEnum):
    """A pool's rollout onto an image (``pool_rollouts.state``; domain/rollouts.py)."""

    ROLLING = "rolling"
    PAUSED = "paused"
    DONE = "done"


RO = RolloutState
# Rolling to rolling is a roll back while under way (same state, the other image); a
# finished rollout may still be rolled back. Moved only by ``rollouts.move``.
ROLLOUT_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    RO.ROLLING: frozenset({RO.PAUSED, RO.DONE}),
    RO.PAUSED: frozenset({RO.ROLLING}),
    RO.DONE: frozenset({RO.ROLLING}),
}

E = TypeVar(
    "E",
    PowerState,
    SessionState,
    ProvisioningState,
    Availability,
    AgentState,
    EnrolmentState,
    RolloutState,
)


def transition(table: dict[E, frozenset[E]], current: E, target: E, *, subject: str = "") -> E:
    """Return ``target`` if the table allows ``current -> target``; staying put is allowed.
    An illegal move is a Conflict naming both states (and ``subject``, e.g. "desktop lab-001")."""
    if current == target or target in table[current]:
        return target
    who = f"{subject} " if subject else ""
    raise Conflict(f"{who}cannot go from {current.value} to {target.value}")


def power_state(value: str) -> PowerState:
    """A stored power state; a value this broker does not know reads as ``unknown``."""
    known = PowerState._value2member_map_
    return PowerState(value) if value in known else PowerState.UNKNOWN


def observe(current: str, reported: PowerState) -> PowerState:
    """The power state a scan records: what the cloud reports when the table allows it,
    else ``unknown`` first, so a surprise is visible rather than silent (the next scan
    moves on from ``unknown``, which may go anywhere). From ``deleted`` too, though the
    table has no way out of it: a machine the broker gave up on that the cloud still
    reports is the cloud's last word, and a scan must record it rather than fail."""
    now = power_state(current)
    if now == reported or reported in POWER_TRANSITIONS[now]:
        return reported
    if now is PowerState.DELETED:
        return PowerState.UNKNOWN
    return transition(POWER_TRANSITIONS, now, PowerState.UNKNOWN)


def settle(current: str, target: PowerState) -> PowerState:
    """The power state after an action that did run: ``target`` when the table allows it;
    otherwise the desktop moved meanwhile (e.g. it was deleted) and keeps that state."""
    now = power_state(current)
    if now == target or target in POWER_TRANSITIONS[now]:
        return target
    return now


# Power states in which an agent may still be running (``unknown``: nobody knows yet).
AGENT_MAY_RUN = frozenset({P.RUNNING, P.BUILDING, P.UNKNOWN})


def agent_after_power(agent: str, power: PowerState) -> AgentState:
    """The agent's state once the desktop is known to be ``power``: an agent cannot run on
    a machine that is stopped, suspended, in error or gone, so a running one is ``lost``.
    The agent reports only session events (no heartbeat), so silence alone proves nothing:
    an idle session sends nothing for hours."""
    now = AgentState(agent) if agent in AgentState._value2member_map_ else AgentState.UNKNOWN
    if now is AgentState.RUNNING and power not in AGENT_MAY_RUN:
        return transition(AGENT_TRANSITIONS, now, AgentState.LOST)
    return now


def from_any(table: dict[E, frozenset[E]], target: E, among: Iterable[E] | None = None) -> E:
    """``target`` for a bulk write over rows in any state (or any of ``among``, which the
    write's WHERE clause selects): the table must allow it from each of them (checked here,
    so a narrowed table fails loudly rather than writing an illegal move)."""
    sources = table.keys() if among is None else among
    refused = [s.value for s in sources if s != target and target not in table[s]]
    if refused:
        raise Conflict(f"cannot go from {', '.join(refused)} to {target.value}")
    return target


# Power states in which a desktop can be handed to a user right away or after a start.
CLAIMABLE_POWER = (P.RUNNING, P.STOPPED, P.SUSPENDED, P.UNKNOWN)


def is_free(power: str, availability: str, assigned: bool) -> bool:
    """A free desktop: nobody holds it, it is in service (available), and its power state
    lets a login hand it out now or after a start. The login claim, the provisioner's
    counts and the pool status all count this (``store.claims.free_desktop`` in SQL)."""
    return (
        not assigned
        and availability == Availability.AVAILABLE.value
        and power in {s.value for s in CLAIMABLE_POWER}
    )


def is_coming_free(power: str, availability: str, assigned: bool, starts_unavailable: bool) -> bool:
    """What the provisioner counts on top of the free desktops, so it does not build twice:
    an unassigned desktop being built, and (in a pool whose desktops start unavailable
    until an administrator releases them) a finished one waiting for that."""
    if assigned:
        return False
    return power == P.BUILDING.value or (
        starts_unavailable and power in {s.value for s in CLAIMABLE_POWER}
    )


ACTIVE_SESSION_STATES = (S.LOGGED_IN, S.CONNECTED, S.LOCKED, S.IDLE, S.DISCONNECTED)

# Each machine's table by the column it governs: the docs generator and the database's
# CHECK constraints read this, so a new state reaches both.
MACHINES: dict[str, tuple[type[StrEnum], dict[Any, frozenset[Any]]]] = {
    "desktop power (desktops.power_state)": (PowerState, POWER_TRANSITIONS),
    "desktop availability (desktops.availability)": (Availability, AVAILABILITY_TRANSITIONS),
    "desktop agent (desktops.agent_state)": (AgentState, AGENT_TRANSITIONS),
    "session (sessions.state)": (SessionState, SESSION_TRANSITIONS),
    "provisioning task (provisioning_tasks.state)": (ProvisioningState, PROVISIONING_TRANSITIONS),
    "pending agent enrolment (pending_enrolments.state)": (EnrolmentState, ENROLMENT_TRANSITIONS),
    "pool rollout (pool_rollouts.state)": (RolloutState, ROLLOUT_TRANSITIONS),
}
