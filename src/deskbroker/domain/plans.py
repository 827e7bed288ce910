"""Power and release plans acting on sessions: pure rules, no I/O.

An agent event moves a session (``EVENT_STATE``); ``on_session_change`` says which plan
timers that sets and which pending ones lose their reason; ``judge`` decides, when a
timer is due, whether its action may still run. The engine and the session service
only carry out what these functions say. A plan's rules are stored as an administrator
wrote them (``PowerRule``, ``ReleaseRule``) and read back with ``parse_rules``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError

from deskbroker.domain.states import PowerState, SessionState
from deskbroker.domain.stored import StoredModel

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


class RogueUsers(StrEnum):
    """What the broker does when an agent reports a login the broker did not hand out."""

    RECORD = "record"  # a ``session.rogue`` event, nothing more
    ASSIGN = "assign"  # the free desktop becomes the user's (a broker user only)
    FLAG = "flag"  # the desktop leaves every offer until an administrator looks


# The stricter of two answers wins: flagging shows the most, assigning the least caution.
_ROGUE_STRICTNESS = {RogueUsers.ASSIGN: 0, RogueUsers.RECORD: 1, RogueUsers.FLAG: 2}


def rogue_policy(entries: Iterable[str | None], default: str) -> RogueUsers:
    """The answer for a desktop from the ``rogue_users`` of the policy entries that offer
    its pools (``None``: the entry leaves it to the broker's ``default``). Several
    policies may offer one pool; the strictest wins, so one policy's ``assign`` cannot
    hand a desktop that another wants flagged."""
    chosen = [RogueUsers(e if e is not None else default) for e in entries]
    if not chosen:
        return RogueUsers(default)
    return max(chosen, key=lambda r: _ROGUE_STRICTNESS[r])


class Trigger(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"
    IDLE = "idle"
    # The session's time limit: counted from its login, whatever the user does.
    SESSION_LIMIT = "session_limit"


class PlanKind(StrEnum):
    POWER = "power"
    RELEASE = "release"


class PlanAction(StrEnum):
    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    RELEASE = "release"
    TERMINATE = "terminate"
    # Tell the user (through the desktop's agent) that a rule's action is coming.
    WARN = "warn"


POWER_ACTIONS = frozenset({PlanAction.SUSPEND, PlanAction.SHUTDOWN, PlanAction.REBOOT})


# --- the rules as an administrator writes them (stored as JSON in the plan's row) ------
class PlanEvent(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"
    IDLE = "idle"


class PlanPowerAction(StrEnum):
    """What a power plan's rule does to the desktop; the driver's verbs (start, stop,
    resume...) are ``centers.base.PowerAction``."""

    SUSPEND = "suspend"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    NOTHING = "nothing"


class ReleaseEvent(StrEnum):
    DISCONNECT = "disconnect"
    LOGOUT = "logout"
    IDLE = "idle"
    SESSION_LIMIT = "session_limit"


class ReleaseAction(StrEnum):
    RELEASE = "release"
    TERMINATE = "terminate"
    KEEP = "keep"


class PowerRule(StoredModel):
    event: PlanEvent
    after_minutes: int = Field(ge=0, le=60 * 24 * 30)
    action: PlanPowerAction
    warn_minutes: int | None = Field(
        default=None,
        ge=1,
        le=60 * 24,
        description="warn the user through the desktop's agent this many minutes before "
        "the desktop is suspended, shut down or rebooted (at most after_minutes); coming "
        "back in that grace period cancels it",
    )


class ReleaseRule(StoredModel):
    event: ReleaseEvent = Field(
        description="disconnect, logout, idle (release on idle; the session is logged off) "
        "or session_limit (after_minutes from the login; the session is logged off)"
    )
    after_minutes: int = Field(ge=0, le=60 * 24 * 30)
    action: ReleaseAction
    warn_minutes: int | None = Field(
        default=None,
        ge=1,
        le=60 * 24,
        description="warn the user through the desktop's agent this many minutes before "
        "the action (at most after_minutes); activity in that grace period cancels an "
        "idle rule",
    )


# Rules whose action is "do nothing" set no timer at all.
NO_OP_ACTIONS = frozenset({PlanPowerAction.NOTHING.value, ReleaseAction.KEEP.value})
_RULE_MODEL: dict[PlanKind, type[PowerRule] | type[ReleaseRule]] = {
    PlanKind.POWER: PowerRule,
    PlanKind.RELEASE: ReleaseRule,
}

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
    Trigger.SESSION_LIMIT: frozenset(set(S) - {S.LOGGED_OUT}),
}
# Triggers whose release also logs the session off through the agent: the user is
# still logged in (idle, or over the time limit) and the desktop goes to someone else.
LOGOFF_TRIGGERS = frozenset({Trigger.IDLE, Trigger.SESSION_LIMIT})

_ALLOWED: dict[PlanKind, tuple[frozenset[Trigger], frozenset[PlanAction]]] = {
    PlanKind.POWER: (
        frozenset({Trigger.DISCONNECT, Trigger.LOGOUT, Trigger.IDLE}),
        POWER_ACTIONS,
    ),
    PlanKind.RELEASE: (
        frozenset({Trigger.DISCONNECT, Trigger.LOGOUT, Trigger.IDLE, Trigger.SESSION_LIMIT}),
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
    # Warn the user this long before the action (None: no warning).
    warn: timedelta | None = None


def parse_rules(plan: PlanKind, rules: Iterable[Mapping[str, Any]]) -> tuple[PlanRule, ...]:
    """The actionable rules of a stored plan, read back through the plan's rule model.

    Rules were validated when the admin wrote them; a rule this version does not
    understand is left out rather than failing the agent event that consults it.
    """
    triggers, actions = _ALLOWED[plan]
    model = _RULE_MODEL[plan]
    parsed: list[PlanRule] = []
    for stored in rules:
        try:
            rule = model.from_stored(stored)
        except ValidationError:
            continue
        if rule.action.value in NO_OP_ACTIONS:
            continue
        trigger, action = Trigger(rule.event.value), PlanAction(rule.action.value)
        if action not in actions or trigger not in triggers:
            continue
        warn_minutes = getattr(rule, "warn_minutes", None)
        warn = timedelta(minutes=min(warn_minutes, rule.after_minutes)) if warn_minutes else None
        parsed.append(PlanRule(plan, trigger, timedelta(minutes=rule.after_minutes), action, warn))
    return tuple(parsed)


# A pooled assignment ends at logout: the desktop goes back to its pool (a release plan
# that says what a logout does has its own way).
POOLED_RELEASE = PlanRule(PlanKind.RELEASE, Trigger.LOGOUT, timedelta(0), PlanAction.RELEASE)


def with_pooled_release(rules: Iterable[PlanRule], pooled: bool) -> list[PlanRule]:
    """The rules a session event consults: a pooled desktop's plans plus the release at
    logout its assignment implies, unless its release plan already acts on a logout."""
    found = list(rules)
    if not pooled or any(r.plan is PlanKind.RELEASE and r.trigger is Trigger.LOGOUT for r in found):
        return found
    return [*found, POOLED_RELEASE]


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
    starting = set()
    if STATE_TRIGGER.get(new) is not None and new != previous:
        starting.add(STATE_TRIGGER[new])
    if previous is None and new is not S.LOGGED_OUT:
        starting.add(Trigger.SESSION_LIMIT)  # the time limit counts from the login
    have = {(t.session_id, t.plan, t.trigger, t.action) for t in kept}
    for rule in rules:
        if rule.trigger not in starting:
            continue
        key = (session_id, rule.plan.value, rule.trigger.value, rule.action.value)
        if key in have:
            continue
        have.add(key)
        due = at + rule.after
        add.append(NewTimer(rule.plan, rule.trigger, rule.action, due))
        warn_key = (session_id, rule.plan.value, rule.trigger.value, PlanAction.WARN.value)
        if rule.warn is not None and warn_key not in have:
            have.add(warn_key)
            add.append(NewTimer(rule.plan, rule.trigger, PlanAction.WARN, due - rule.warn))
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
    if action is PlanAction.WARN:
        return Verdict(Outcome.RUN, action)
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
