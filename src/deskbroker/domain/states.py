"""State enums with their transition tables. Only ``transition`` moves a state."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

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


class Availability(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class AgentState(StrEnum):
    UNKNOWN = "unknown"
    RUNNING = "running"
    LOST = "lost"


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
# the desktop as ``unknown`` first, so a surprise is visible rather than silent.
POWER_TRANSITIONS: dict[PowerState, frozenset[PowerState]] = {
    P.UNKNOWN: frozenset(set(P) - {P.UNKNOWN}),
    P.BUILDING: frozenset({P.RUNNING, P.STOPPED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.RUNNING: frozenset({P.STOPPED, P.SUSPENDED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.STOPPED: frozenset({P.RUNNING, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.SUSPENDED: frozenset({P.RUNNING, P.STOPPED, P.ERROR, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.ERROR: frozenset({P.RUNNING, P.STOPPED, P.DELETING, P.DELETED, P.UNKNOWN}),
    P.DELETING: frozenset({P.DELETED, P.ERROR, P.UNKNOWN}),
    P.DELETED: frozenset(),
}

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
    T.CREATING: frozenset({T.WAITING, T.FAILED, T.CANCELLED}),
    T.WAITING: frozenset({T.ADDRESSING, T.READY, T.FAILED, T.CANCELLED}),
    T.ADDRESSING: frozenset({T.READY, T.FAILED, T.CANCELLED}),
    T.READY: frozenset(),
    T.FAILED: frozenset(),
    T.CANCELLED: frozenset(),
}

AVAILABILITY_TRANSITIONS: dict[Availability, frozenset[Availability]] = {
    Availability.AVAILABLE: frozenset({Availability.UNAVAILABLE}),
    Availability.UNAVAILABLE: frozenset({Availability.AVAILABLE}),
}

E = TypeVar("E", PowerState, SessionState, ProvisioningState, Availability)


def transition(table: dict[E, frozenset[E]], current: E, target: E) -> E:
    """Return ``target`` if the table allows ``current -> target``; staying put is allowed."""
    if current == target or target in table[current]:
        return target
    raise Conflict(f"cannot go from {current.value} to {target.value}")


# Power states in which a desktop can be handed to a user right away or after a start.
CLAIMABLE_POWER = (P.RUNNING, P.STOPPED, P.SUSPENDED, P.UNKNOWN)
ACTIVE_SESSION_STATES = (S.LOGGED_IN, S.CONNECTED, S.LOCKED, S.IDLE, S.DISCONNECTED)
