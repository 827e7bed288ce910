"""Rolling a pool onto a new image: the rollout's state machine, which desktops it may
rebuild now, and its progress in numbers and words.

A rollout moves every desktop of a pool onto one image without interrupting anyone:
free desktops are rebuilt first (taken out of the claim while they are), a pooled
desktop someone holds waits until its user released it, and a persistent desktop is
rebuilt only when the administrator asked for it, and then only while nobody has a
session on it. Pausing stops new rebuilds (those under way finish); rolling back aims
the same rollout at the image the pool had before.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from deskbroker.domain.offers import AssignmentKind
from deskbroker.domain.states import ROLLOUT_TRANSITIONS, RolloutState
from deskbroker.errors import Conflict


# What an administrator (or the engine, for ``finish``) asks of a rollout.
class RolloutStep(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ROLL_BACK = "roll_back"
    FINISH = "finish"


R = RolloutState

# Each step: the states it is taken from, and where it leads.
ROLLOUT_STEPS: dict[RolloutStep, tuple[frozenset[RolloutState], RolloutState]] = {
    RolloutStep.PAUSE: (frozenset({R.ROLLING}), R.PAUSED),
    RolloutStep.RESUME: (frozenset({R.PAUSED}), R.ROLLING),
    RolloutStep.ROLL_BACK: (frozenset({R.ROLLING, R.PAUSED, R.DONE}), R.ROLLING),
    RolloutStep.FINISH: (frozenset({R.ROLLING}), R.DONE),
}

# A new rollout may replace only a finished one: one under way or paused would leave
# the pool on three images and "roll back" meaning nothing clear.
REPLACEABLE = frozenset({R.DONE})


def move(current: str, step: RolloutStep, *, subject: str) -> RolloutState:
    """The one function that moves a rollout: the state ``step`` leads to from
    ``current``, or a ``Conflict`` in words ("pool lab's rollout is done: it cannot
    pause")."""
    now = RolloutState(current)
    allowed, target = ROLLOUT_STEPS[step]
    if now not in allowed:
        raise Conflict(f"{subject}'s rollout is {now.value}: it cannot {_words(step)}")
    if now != target and target not in ROLLOUT_TRANSITIONS[now]:  # the table has the last word
        raise Conflict(f"{subject}'s rollout cannot go from {now.value} to {target.value}")
    return target


def _words(step: RolloutStep) -> str:
    return step.value.replace("_", " ")


@dataclass(frozen=True)
class DesktopView:
    """What the rollout needs to know of one desktop of the pool."""

    image: str  # the image id the center last reported
    assigned: bool
    kind: str | None  # the assignment's kind (persistent or pooled) when assigned
    free: bool  # ``states.is_free``: a login could be given it now
    in_session: bool
    rebuilding: bool  # a rebuild of it is under way
    failed: bool  # its last rebuild failed


class Fate(StrEnum):
    """Where one desktop stands in the rollout."""

    ON_TARGET = "on_target"
    REBUILDING = "rebuilding"
    FAILED = "failed"
    REBUILD_NOW = "rebuild_now"
    WAITING_FOR_USER = "waiting_for_user"
    PERSISTENT_KEPT = "persistent_kept"
    NOT_READY = "not_ready"  # not free, not held: building, in error, unavailable


def fate(desktop: DesktopView, target_image: str, *, include_persistent: bool) -> Fate:
    """Whether a desktop is on the target image, may be rebuilt now, or waits (and why).
    A desktop held by someone is never rebuilt while its session lasts; a pooled one
    not before its user released it."""
    if desktop.rebuilding:
        return Fate.REBUILDING
    if desktop.image == target_image:
        return Fate.ON_TARGET
    if desktop.failed:
        return Fate.FAILED
    persistent = desktop.assigned and desktop.kind == AssignmentKind.PERSISTENT.value
    if persistent and not include_persistent:
        return Fate.PERSISTENT_KEPT
    if desktop.in_session:  # whoever is on it, held or not, is never interrupted
        return Fate.WAITING_FOR_USER
    if desktop.free or persistent:
        return Fate.REBUILD_NOW
    if not desktop.assigned:
        return Fate.NOT_READY
    return Fate.WAITING_FOR_USER


@dataclass(frozen=True)
class Progress:
    """A rollout's figures: ``on_target`` of ``total`` desktops are on the image."""

    total: int
    on_target: int
    rebuilding: int
    to_rebuild: int  # free (or asked-for persistent) desktops not started yet
    waiting_for_users: int
    persistent_kept: int
    failed: int
    not_ready: int

    @classmethod
    def of(cls, fates: list[Fate]) -> Progress:
        def n(f: Fate) -> int:
            return sum(1 for x in fates if x is f)

        return cls(
            total=len(fates),
            on_target=n(Fate.ON_TARGET),
            rebuilding=n(Fate.REBUILDING),
            to_rebuild=n(Fate.REBUILD_NOW),
            waiting_for_users=n(Fate.WAITING_FOR_USER),
            persistent_kept=n(Fate.PERSISTENT_KEPT),
            failed=n(Fate.FAILED),
            not_ready=n(Fate.NOT_READY),
        )

    @property
    def finished(self) -> bool:
        """Every desktop the rollout covers is on the image (kept persistent ones aside)."""
        return self.on_target + self.persistent_kept == self.total and self.failed == 0


def words(progress: Progress, state: RolloutState, *, rolled_back: bool) -> str:
    """The progress in a sentence: "12 of 40 on the new image, 3 waiting for their
    users to leave, 2 being rebuilt"."""
    which = "the previous image" if rolled_back else "the new image"
    parts = [f"{progress.on_target} of {progress.total} on {which}"]
    if progress.rebuilding:
        parts.append(f"{progress.rebuilding} being rebuilt")
    if progress.to_rebuild:
        parts.append(f"{progress.to_rebuild} to rebuild")
    if progress.waiting_for_users:
        whose = "its user" if progress.waiting_for_users == 1 else "their users"
        parts.append(f"{progress.waiting_for_users} waiting for {whose} to leave")
    if progress.persistent_kept:
        parts.append(f"{progress.persistent_kept} persistent kept on their image until asked")
    if progress.failed:
        parts.append(f"{progress.failed} failed to rebuild")
    if progress.not_ready:
        parts.append(f"{progress.not_ready} not ready (building, in error or out of service)")
    sentence = ", ".join(parts)
    if state is RolloutState.PAUSED:
        return f"paused: {sentence}; no new rebuilds until resumed"
    if state is RolloutState.DONE:
        return f"done: {sentence}"
    return sentence
