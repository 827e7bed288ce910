"""The SQL of rollouts and rebuilds: a pool's rollout row, its desktops as the rollout
sees them, taking a desktop out of the claim for a rebuild and giving it back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from deskbroker.domain.offers import AssignmentKind
from deskbroker.domain.states import (
    ACTIVE_SESSION_STATES,
    AVAILABILITY_TRANSITIONS,
    CLAIMABLE_POWER,
    Availability,
    PowerState,
    from_any,
    observe,
)
from deskbroker.store.jobs import JobKind
from deskbroker.store.tables import (
    FREE_DESKTOP,
    Desktop,
    DesktopRebuild,
    Job,
    PoolMember,
    PoolRollout,
    PoolUpkeep,
    SessionRow,
    utcnow,
)

# A connect hands a desktop out before its agent reports the session: a persistent
# desktop granted this recently counts as in use.
CONNECT_GRACE_S = 300.0

_IN_SESSION = exists().where(
    SessionRow.desktop_id == Desktop.id,
    SessionRow.state.in_([s.value for s in ACTIVE_SESSION_STATES]),
)


def rollout_of(session: Session, pool_id: str, *, lock: bool = False) -> PoolRollout | None:
    """The pool's rollout (locked for a change when ``lock``)."""
    query = select(PoolRollout).where(PoolRollout.pool_id == pool_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def rolling_pools(session: Session) -> list[str]:
    """Pools whose rollout may need the engine: rolling or paused (rebuilds under way)."""
    return list(session.scalars(select(PoolRollout.pool_id)))


@dataclass(frozen=True)
class RolloutDesktop:
    """One desktop of a pool in a rollout's center, with what the rollout reads of it."""

    id: str
    name: str
    external_id: str
    image: str
    power_state: str
    availability: str
    assigned: bool
    kind: str | None
    free: bool
    in_session: bool
    rebuild_reason: str | None
    rebuild_image: str | None
    rebuild_failed: bool
    rebuild_message: str


def pool_desktops(session: Session, pool_id: str, center_id: str) -> list[RolloutDesktop]:
    """The pool's desktops in ``center_id`` (the center its rollout rebuilds in), by name."""
    rows = session.execute(
        select(
            Desktop.id,
            Desktop.name,
            Desktop.external_id,
            Desktop.attributes,
            Desktop.power_state,
            Desktop.availability,
            Desktop.assigned_user_id,
            Desktop.assignment_kind,
            FREE_DESKTOP.label("free"),
            _IN_SESSION.label("in_session"),
            DesktopRebuild.reason,
            DesktopRebuild.image_id,
            DesktopRebuild.failed,
            DesktopRebuild.message,
        )
        .join(PoolMember, PoolMember.desktop_id == Desktop.id)
        .outerjoin(DesktopRebuild, DesktopRebuild.desktop_id == Desktop.id)
        .where(PoolMember.pool_id == pool_id, Desktop.center_id == center_id)
        .order_by(Desktop.name)
    ).all()
    return [
        RolloutDesktop(
            id=r.id,
            name=r.name,
            external_id=r.external_id,
            image=str((r.attributes or {}).get("image") or ""),
            power_state=r.power_state,
            availability=r.availability,
            assigned=r.assigned_user_id is not None,
            kind=r.assignment_kind,
            free=bool(r.free),
            in_session=bool(r.in_session),
            rebuild_reason=r.reason,
            rebuild_image=r.image_id,
            rebuild_failed=bool(r.failed),
            rebuild_message=r.message or "",
        )
        for r in rows
    ]


def take_out(
    session: Session,
    desktop_id: str,
    *,
    tenant_id: str,
    pool_id: str,
    reason: str,
    image_id: str,
    persistent_too: bool,
    now: datetime,
) -> bool:
    """Take a desktop out of the claim for a rebuild, in one statement that checks it is
    still free (or, when ``persistent_too``, a persistent desktop nobody is in or was
    just given), so a login racing the engine either got it first or cannot get it.
    False: it is not rebuildable any more (someone took it)."""
    free = FREE_DESKTOP
    if persistent_too:
        quiet = and_(
            Desktop.assignment_kind == AssignmentKind.PERSISTENT.value,
            Desktop.power_state.in_([s.value for s in CLAIMABLE_POWER]),
            ~_IN_SESSION,
            or_(
                Desktop.connect_granted_at.is_(None),
                Desktop.connect_granted_at < now - timedelta(seconds=CONNECT_GRACE_S),
            ),
        )
        free = or_(FREE_DESKTOP, quiet)
    # Locked as read: an administrator's (or a drain's) change committed between this
    # read and the update below would otherwise be undone when the rebuild gives the
    # desktop back the availability read here (on PostgreSQL each statement sees its
    # own moment). A claim passes a locked row over.
    was = session.execute(
        select(Desktop.availability).where(Desktop.id == desktop_id).with_for_update()
    ).scalar_one_or_none()
    if was is None:
        return False
    done = session.execute(
        update(Desktop)
        # Never one in use: a session open on it (however it came) keeps it.
        .where(Desktop.id == desktop_id, free, ~_IN_SESSION)
        .values(
            availability=from_any(AVAILABILITY_TRANSITIONS, Availability.UNAVAILABLE).value,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(done, "rowcount", 0) != 1:
        return False
    session.add(
        DesktopRebuild(
            desktop_id=desktop_id,
            tenant_id=tenant_id,
            pool_id=pool_id,
            reason=reason,
            image_id=image_id,
            was_available=was == Availability.AVAILABLE.value,
            started_at=now,
        )
    )
    session.flush()
    return True


def put_back(
    session: Session,
    desktop_id: str,
    *,
    power: PowerState | None,
    image_id: str | None,
    now: datetime,
) -> None:
    """A rebuild finished (or never started): the desktop gets its availability back and
    records what the center reported (its power state and image)."""
    rebuild = session.get(DesktopRebuild, desktop_id, with_for_update=True)
    desktop = session.get(Desktop, desktop_id, with_for_update=True)
    if desktop is None:
        return
    if rebuild is not None and rebuild.was_available:
        desktop.availability = from_any(
            AVAILABILITY_TRANSITIONS, Availability.AVAILABLE, [Availability.UNAVAILABLE]
        ).value
    if power is not None:
        desktop.power_state = observe(desktop.power_state, power).value
    if image_id is not None:
        attributes: dict[str, Any] = dict(desktop.attributes or {})
        attributes["image"] = image_id
        desktop.attributes = attributes
    desktop.updated_at = now
    if rebuild is not None:
        session.delete(rebuild)
    session.flush()


def mark_failed(session: Session, desktop_id: str, message: str) -> None:
    """The rebuild failed: the desktop stays out of the claim, and says why."""
    session.execute(
        update(DesktopRebuild)
        .where(DesktopRebuild.desktop_id == desktop_id)
        .values(failed=True, message=message[:2000])
        .execution_options(synchronize_session=False)
    )


# The message of a rebuild (or reboot) claimed for asking the center whose answer is not
# recorded yet: the intent, written before the call (see ``claim_ask``).
ASKING = "asking the center"


def claim_ask(session: Session, desktop_id: str, now: datetime) -> bool:
    """Claim a rebuild (or reboot) for asking the center, before it is asked: in one
    statement, only while it is not asked yet nor failed and its desktop is still out of
    the claim with nobody in it. False: another run asked already, or the desktop was
    given back (and perhaps handed out again): a stale or duplicate run must not ask."""
    desktop_out = exists().where(
        Desktop.id == DesktopRebuild.desktop_id,
        Desktop.availability == Availability.UNAVAILABLE.value,
        or_(
            Desktop.assigned_user_id.is_(None),
            Desktop.assignment_kind == AssignmentKind.PERSISTENT.value,
        ),
    )
    in_session = exists().where(
        SessionRow.desktop_id == DesktopRebuild.desktop_id,
        SessionRow.state.in_([s.value for s in ACTIVE_SESSION_STATES]),
    )
    claimed = session.execute(
        update(DesktopRebuild)
        .where(
            DesktopRebuild.desktop_id == desktop_id,
            DesktopRebuild.started.is_(False),
            DesktopRebuild.failed.is_(False),
            desktop_out,
            ~in_session,
        )
        .values(started=True, message=ASKING, started_at=now)
        .execution_options(synchronize_session=False)
    )
    return getattr(claimed, "rowcount", 0) == 1


def ask_again(session: Session, desktop_id: str, asked_before: datetime) -> bool:
    """A rebuild claimed for asking before ``asked_before`` whose answer was never
    recorded (its run died, or stalled past any call's end): whether the center got the
    ask is unknown, so it is asked again (a desktop out of the claim may be rebuilt
    twice; a refresh must not be skipped)."""
    again = session.execute(
        update(DesktopRebuild)
        .where(
            DesktopRebuild.desktop_id == desktop_id,
            DesktopRebuild.started.is_(True),
            DesktopRebuild.failed.is_(False),
            DesktopRebuild.message == ASKING,
            DesktopRebuild.started_at < asked_before,
        )
        .values(started=False, message="")
        .execution_options(synchronize_session=False)
    )
    return getattr(again, "rowcount", 0) == 1


def mark_started(
    session: Session, desktop_id: str, *, image_id: str, rebuilt: bool, now: datetime
) -> bool:
    """The center accepted the rebuild (or reboot) claimed with ``claim_ask``: watched
    from now on; a rebuilt desktop is being built again, from ``image_id`` (its id on the
    center). False (nothing written): the rebuild is no longer there to record."""
    recorded = session.execute(
        update(DesktopRebuild)
        .where(DesktopRebuild.desktop_id == desktop_id, DesktopRebuild.started.is_(True))
        .values(image_id=image_id, message="")
        .execution_options(synchronize_session=False)
    )
    if getattr(recorded, "rowcount", 0) != 1:
        return False
    desktop = session.get(Desktop, desktop_id, with_for_update=True)
    if desktop is not None and rebuilt:
        desktop.power_state = observe(desktop.power_state, PowerState.BUILDING).value
        desktop.updated_at = now
    return True


@dataclass(frozen=True)
class RebuildRow:
    """A desktop taken out for a rebuild or reboot, with where to ask for it."""

    desktop_id: str
    tenant_id: str
    pool_id: str
    name: str
    external_id: str
    center_id: str
    reason: str
    image_id: str
    started: bool
    failed: bool
    # Claimed for asking the center at ``asked_at``, its answer not recorded yet.
    asking: bool
    asked_at: datetime


def rebuilds_of(session: Session, pool_id: str) -> list[RebuildRow]:
    """The pool's desktops out for a rebuild or reboot (failed ones too), by name."""
    rows = session.execute(
        select(
            DesktopRebuild.desktop_id,
            DesktopRebuild.tenant_id,
            DesktopRebuild.pool_id,
            Desktop.name,
            Desktop.external_id,
            Desktop.center_id,
            DesktopRebuild.reason,
            DesktopRebuild.image_id,
            DesktopRebuild.started,
            DesktopRebuild.failed,
            DesktopRebuild.message,
            DesktopRebuild.started_at,
        )
        .join(Desktop, Desktop.id == DesktopRebuild.desktop_id)
        .where(DesktopRebuild.pool_id == pool_id)
        .order_by(Desktop.name)
    ).all()
    return [
        RebuildRow(
            desktop_id=r.desktop_id,
            tenant_id=r.tenant_id,
            pool_id=r.pool_id,
            name=r.name,
            external_id=r.external_id,
            center_id=r.center_id,
            reason=r.reason,
            image_id=r.image_id,
            started=bool(r.started),
            failed=bool(r.failed),
            asking=bool(r.started) and not r.failed and r.message == ASKING,
            asked_at=r.started_at,
        )
        for r in rows
    ]


def free_members(session: Session, pool_id: str) -> list[str]:
    """The pool's free desktops nobody has a session on and nothing is rebuilding."""
    return list(
        session.scalars(
            select(Desktop.id)
            .join(PoolMember, PoolMember.desktop_id == Desktop.id)
            .where(
                PoolMember.pool_id == pool_id,
                FREE_DESKTOP,
                ~_IN_SESSION,
                ~exists().where(DesktopRebuild.desktop_id == Desktop.id),
            )
            .order_by(Desktop.name)
        )
    )


def upkeep_of(session: Session, pool_id: str, *, lock: bool = False) -> PoolUpkeep | None:
    """The pool's upkeep settings (None: the defaults, nothing scheduled)."""
    query = select(PoolUpkeep).where(PoolUpkeep.pool_id == pool_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).first()


def forget_failures(session: Session, pool_id: str) -> int:
    """Failed rebuilds of the pool given back to the rollout (a resume or roll back tries
    them again); their desktops come back into the claim."""
    rows = session.scalars(
        select(DesktopRebuild.desktop_id).where(
            DesktopRebuild.pool_id == pool_id, DesktopRebuild.failed.is_(True)
        )
    ).all()
    for desktop_id in rows:
        put_back(session, desktop_id, power=None, image_id=None, now=utcnow())
    return len(rows)


@dataclass(frozen=True)
class PoolWork:
    """What the pool's rollout job may have to do, read in one statement: its rollout's
    state, its scheduled action, and whether desktops are out for a rebuild or reboot."""

    rollout_state: str | None
    scheduled_action: str | None
    rebuilds: int


def pool_work(session: Session, pool_id: str) -> PoolWork:
    """The idle pool's whole cost to the rollout job: this one read."""
    row = session.execute(
        select(
            select(PoolRollout.state).where(PoolRollout.pool_id == pool_id).scalar_subquery(),
            select(PoolUpkeep.scheduled_action)
            .where(PoolUpkeep.pool_id == pool_id)
            .scalar_subquery(),
            select(func.count())
            .select_from(DesktopRebuild)
            .where(DesktopRebuild.pool_id == pool_id, DesktopRebuild.failed.is_(False))
            .scalar_subquery(),
        )
    ).one()
    return PoolWork(rollout_state=row[0], scheduled_action=row[1], rebuilds=int(row[2] or 0))


def watch_again(session: Session, pool_id: str, at: datetime) -> None:
    """Have the pool's rollout job run again at ``at`` (sooner than its interval) while
    rebuilds are under way: a batch's end is seen within a second or so, not a whole
    interval later. Set during the run, it survives the run's own release (the runner
    keeps an earlier time asked for meanwhile)."""
    session.execute(
        update(Job)
        .where(Job.kind == JobKind.POOL_ROLLOUT.value, Job.target_id == pool_id)
        .values(next_run_at=at)
        .execution_options(synchronize_session=False)
    )
