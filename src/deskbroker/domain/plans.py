"""Power and release plans acting on sessions: pure rules, no I/O.

An agent event moves a session (``EVENT_STATE``); ``on_session_change`` says which plan
timers that sets and which pending ones lose their reason; ``judge`` decides, when a
timer is due, whether its action may still run. The engine and the session service
only carry out what these functions say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from deskbroker.domain.states import PowerState, SessionState

S = SessionState


class AgentEvent(StrEnum):
    """What a desktop's agent reports about one user session."""

    LOGIN = "login"
    LOGOUT = "logout"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    LOCK = "lock"
    UNLOCK = "unlock"
    IDLE = "idle"
    ACTIVE = "active"


# The state each event asks for; SESSION_TRANSITIONS decides whether it may follow.
EVENT_STATE: dict[AgentEvent, SessionState] = {
    AgentEvent.LOGIN: S.LOGGED_IN,
    AgentEvent.LOGOUT: S.LOGGED_OUT,
    AgentEvent.DISCONNECT: S.DISCONNECTED,
    AgentEvent.RECONNECT: S.CONNECTED,
    AgentEvent.LOCK: S.LOCKED,
    AgentEvent.UNLOCK: S.CONNECTED,
    AgentEvent.IDLE: S.IDLE,
    AgentEvent.ACTIVE: S.CONNECTED,
}

# A session in one of these states has a person at it (or able to come back at once):
# no plan may power off, suspend, reboot, terminate or release its desktop.
IN_USE_STATES = frozenset({S.LOGGED_IN, S.CONNECTED, S.LOCKED})


class Trigger(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"
    IDLE = "idle"


class PlanKind(StrEnum):
    POWER = "power"
    RELEASE = "release"


class PlanAction(StrEnum):
    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    RELEASE = "release"
    TERMINATE = "terminate"


POWER_ACTIONS = frozenset({PlanAction.SUSPEND, PlanAction.SHUTDOWN, PlanAction.REBOOT})
# Rules whose action is "do nothing" set no timer at all.
NO_OP_ACTIONS = frozenset({"nothing", "keep"})

# The session state that starts each trigger's clock.
STATE_TRIGGER: dict[SessionState, Trigger] = {
    S.DISCONNECTED: Trigger.DISCONNECT,
    S.IDLE: Trigger.IDLE,
    S.LOGGED_OUT: Trigger.LOGOUT,
}

# The states in which a trigger's reason still holds. A disconnected session that the
# agent later calls idle is still away (and the reverse), so neither resets the clock
# of the other; coming back (connected, locked) ends both.
TRIGGER_HOLDS: dict[Trigger, frozenset[SessionState]] = {
    Trigger.DISCONNECT: frozenset({S.DISCONNECTED, S.IDLE}),
    Trigger.IDLE: frozenset({S.IDLE, S.DISCONNECTED}),
    Trigger.LOGOUT: frozenset({S.LOGGED_OUT}),
}

_ALLOWED: dict[PlanKind, tuple[frozenset[Trigger], frozenset[PlanAction]]] = {
    PlanKind.POWER: (
        frozenset({Trigger.DISCONNECT, Trigger.LOGOUT, Trigger.IDLE}),
        POWER_ACTIONS,
    ),
    PlanKind.RELEASE: (
        frozenset({Trigger.DISCONNECT, Trigger.LOGOUT}),
        frozenset({PlanAction.RELEASE, PlanAction.TERMINATE}),
    ),
}


@dataclass(frozen=True)
class PlanRule:
    """One rule of a plan: on ``trigger``, after ``after``, do ``action``."""

    plan: PlanKind
    trigger: Trigger
    after: timedelta
    action: PlanAction


def parse_rules(plan: PlanKind, rules: Iterable[Mapping[str, Any]]) -> tuple[PlanRule, ...]:
    """The actionable rules of a stored plan.

    Rules were validated when the admin wrote them; a rule this version does not
    understand is left out rather than failing the agent event that consults it.
    """
    triggers, actions = _ALLOWED[plan]
    parsed: list[PlanRule] = []
    for rule in rules:
        action = str(rule.get("action", ""))
        trigger = str(rule.get("event", ""))
        minutes = rule.get("after_minutes", 0)
        if action in NO_OP_ACTIONS or isinstance(minutes, bool):
            continue
        if action not in PlanAction._value2member_map_ or trigger not in Trigger._value2member_map_:
            continue
        if PlanAction(action) not in actions or Trigger(trigger) not in triggers:
            continue
        if not isinstance(minutes, int | float) or minutes < 0:
            continue
        parsed.append(
            PlanRule(plan, Trigger(trigger), timedelta(minutes=minutes), PlanAction(action))
        )
    return tuple(parsed)


@dataclass(frozen=True)
class PendingTimer:
    """A timer already set on the desktop."""

    id: str
    session_id: str | None
    plan: str
    trigger: str
    action: str


@dataclass(frozen=True)
class NewTimer:
    plan: PlanKind
    trigger: Trigger
    action: PlanAction
    due_at: datetime


@dataclass(frozen=True)
class TimerChanges:
    add: tuple[NewTimer, ...]
    cancel: tuple[str, ...]


def on_session_change(
    *,
    session_id: str,
    previous: SessionState | None,
    new: SessionState,
    at: datetime,
    rules: Sequence[PlanRule],
    pending: Sequence[PendingTimer],
) -> TimerChanges:
    """Timers to set and to cancel when a session goes from ``previous`` to ``new``.

    ``previous`` is ``None`` for a new login. ``pending`` is every timer on the desktop.
    A session's disconnect and idle timers go when it leaves the states that hold their
    reason; a new login on the desktop cancels every "after logout" timer. A reason that
    already has its timer keeps it: a repeated report must not push the action back.
    """
    cancel: list[str] = []
    kept: list[PendingTimer] = []
    for timer in pending:
        trigger = Trigger(timer.trigger) if timer.trigger in Trigger._value2member_map_ else None
        gone = (
            trigger is not None
            and trigger is not Trigger.LOGOUT
            and timer.session_id == session_id
            and new not in TRIGGER_HOLDS[trigger]
        ) or (previous is None and trigger is Trigger.LOGOUT)
        if gone:
            cancel.append(timer.id)
        else:
            kept.append(timer)
    add: list[NewTimer] = []
    trigger = STATE_TRIGGER.get(new)
    if trigger is not None and new != previous:
        have = {(t.session_id, t.plan, t.trigger, t.action) for t in kept}
        for rule in rules:
            key = (session_id, rule.plan.value, rule.trigger.value, rule.action.value)
            if rule.trigger is trigger and key not in have:
                have.add(key)
                add.append(NewTimer(rule.plan, rule.trigger, rule.action, at + rule.after))
    return TimerChanges(tuple(add), tuple(cancel))


class Outcome(StrEnum):
    RUN = "run"
    SKIP = "skip"  # the action does not apply (recorded, not an error)
    CANCEL = "cancel"  # the reason went away before the timer fired


@dataclass(frozen=True)
class FireFacts:
    """What is true of the desktop when a timer is due."""

    trigger: Trigger
    action: PlanAction
    # State of the session that set the timer; None if it no longer exists.
    trigger_state: SessionState | None
    # Open sessions on the desktop other than the triggering one.
    other_states: tuple[SessionState, ...]
    assigned: bool
    # The desktop was (re)assigned after the timer was set: it is someone else's now.
    reassigned: bool
    power_state: PowerState
    deletable: bool
    can_power: bool
    can_terminate: bool


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    action: PlanAction
    reason: str = ""


# Power states a power action may start from; anything else means it already happened
# or the desktop is in no state to be touched.
_POWER_FROM: dict[PlanAction, frozenset[PowerState]] = {
    PlanAction.SUSPEND: frozenset({PowerState.RUNNING, PowerState.UNKNOWN}),
    PlanAction.SHUTDOWN: frozenset({PowerState.RUNNING, PowerState.SUSPENDED, PowerState.UNKNOWN}),
    PlanAction.REBOOT: frozenset({PowerState.RUNNING, PowerState.UNKNOWN}),
}


def judge(facts: FireFacts) -> Verdict:
    """Whether a due timer may act, re-checked at fire time (never trust schedule time).

    Terminating a desktop that is not deletable (or on a center that cannot terminate)
    releases it instead: the plan's intent, a fresh desktop for the next user, is kept
    without destroying a machine the broker does not own.
    """
    action = facts.action
    if facts.trigger_state is None:
        return Verdict(Outcome.CANCEL, action, "the session that set the timer is gone")
    if facts.trigger_state not in TRIGGER_HOLDS[facts.trigger]:
        return Verdict(Outcome.CANCEL, action, f"the session is {facts.trigger_state.value} again")
    busy = sorted({s.value for s in facts.other_states if s in IN_USE_STATES})
    if busy:
        return Verdict(Outcome.SKIP, action, f"another session on the desktop is {', '.join(busy)}")
    if facts.reassigned:
        return Verdict(
            Outcome.CANCEL, action, "the desktop was assigned again after the timer was set"
        )
    if facts.power_state in (PowerState.DELETING, PowerState.DELETED):
        return Verdict(Outcome.SKIP, action, f"the desktop is {facts.power_state.value}")
    if action in POWER_ACTIONS:
        if not facts.can_power:
            return Verdict(Outcome.SKIP, action, "its center cannot power machines")
        if facts.power_state not in _POWER_FROM[action]:
            return Verdict(Outcome.SKIP, action, f"the desktop is {facts.power_state.value}")
        return Verdict(Outcome.RUN, action)
    if action is PlanAction.TERMINATE:
        if facts.deletable and facts.can_terminate:
            return Verdict(Outcome.RUN, action)
        why = "is not deletable" if not facts.deletable else "is on a center that cannot delete"
        if not facts.assigned:
            return Verdict(Outcome.SKIP, action, f"the desktop {why}")
        return Verdict(Outcome.RUN, PlanAction.RELEASE, f"the desktop {why}; released instead")
    if not facts.assigned:
        return Verdict(Outcome.SKIP, action, "the desktop is not assigned")
    return Verdict(Outcome.RUN, action)


def retry_delay(failures: int) -> timedelta:
    """Backoff before a failed plan action is tried again: 30 s doubling, at most 1 h."""
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, failures - 1)))
