"""Keeps the materialised ``pool_members`` table true to the pools' definitions."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from deskbroker.domain.membership import (
    DesktopFacts,
    PoolDefinition,
    filters_from_stored,
    members,
)
from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.provisioning import Provisioning
from deskbroker.domain.states import PowerState
from deskbroker.store import advisory, leases
from deskbroker.store.db import Database, after_commit
from deskbroker.store.planner import refresh_statistics
from deskbroker.store.tables import (
    AssignmentRuleRow,
    Center,
    Desktop,
    PolicyEntry,
    Pool,
    PoolMember,
    TenantGuard,
    User,
)


def build_centers(center_ids: list[str] | None, provisioning: Any) -> frozenset[str]:
    """The centers a pool builds in, from its stored provisioning (a stored one that no
    longer reads: none)."""
    try:
        return frozenset(Provisioning.from_stored(provisioning).build_centers(center_ids))
    except ValueError:
        return frozenset()


def definition(pool: Any, guarded: Collection[str] = ()) -> PoolDefinition:
    """A pool row (ORM or Core: id, center_ids, filters, desktop_ids, parent_pool_id,
    provisioning) as the definition membership computes with; ``guarded``: the pools
    offered to a global administrator (``Guard``)."""
    return PoolDefinition(
        pool_id=pool.id,
        center_ids=frozenset(pool.center_ids or []),
        filters=filters_from_stored(pool.filters),
        desktop_ids=frozenset(pool.desktop_ids or []),
        parent_pool_id=pool.parent_pool_id,
        build_center_ids=build_centers(pool.center_ids, pool.provisioning),
        guarded=pool.id in guarded,
    )


def _facts(row: Any, unvouched: Collection[str] = ()) -> DesktopFacts:
    fields: dict[str, Any] = dict(row.attributes or {})
    fields.update(
        name=row.name,
        address=row.address,
        hostname=row.hostname,
        os=row.os,
        power_state=row.power_state,
    )
    return DesktopFacts(
        desktop_id=row.id,
        center_id=row.center_id,
        fields=fields,
        vouched=row.center_id not in unvouched,
    )


_GLOBAL = BuiltinRole.GLOBAL_ADMIN.value
_RULES = leases.table_of(AssignmentRuleRow)
_ENTRIES = leases.table_of(PolicyEntry)
_USERS = leases.table_of(User)
_CENTERS = leases.table_of(Center)
# The pools offered to a global administrator, conservatively: those of a policy a rule
# hands out that grants the role, or a rule of a source a global administrator signs in
# through, whatever its conditions (a login chooses its time and network).
_OFFERED_TO_GLOBAL = (
    select(_ENTRIES.c.pool_id, _ENTRIES.c.backup_pool_id)
    .join(_RULES, _RULES.c.policy_id == _ENTRIES.c.policy_id)
    .where(
        _RULES.c.tenant_id == bindparam("b_tenant"),
        or_(
            _RULES.c.role == _GLOBAL,
            _RULES.c.identity_source_id.in_(
                select(_USERS.c.identity_source_id).where(
                    _USERS.c.tenant_id == bindparam("b_tenant"), _USERS.c.role == _GLOBAL
                )
            ),
        ),
    )
)
_UNVOUCHED = select(_CENTERS.c.id).where(
    _CENTERS.c.tenant_id == bindparam("b_tenant"),
    or_(
        _CENTERS.c.vouched_by_global_admin.is_(None),
        _CENTERS.c.vouched_by_global_admin.is_(False),
    ),
)


@dataclass(frozen=True)
class Guard:
    """Which pools take by their filters alone only vouched desktops, and which centers
    no global administrator vouches for (``PoolDefinition.guarded``)."""

    pools: frozenset[str] = frozenset()
    unvouched: frozenset[str] = frozenset()


def guard(session: leases.Unit, tenant_id: str, pools: Sequence[Any]) -> Guard:
    """The tenant's guard, read only when a pool names neither centers nor desktops
    (the only kind it changes): two small reads, none for most tenants."""
    loose = {p.id for p in pools if not (p.center_ids or p.desktop_ids)}
    if not loose:
        return Guard()
    offered: set[str] = set()
    for pool_id, backup_id in session.execute(_OFFERED_TO_GLOBAL, {"b_tenant": tenant_id}):
        offered.update(p for p in (pool_id, backup_id) if p is not None)
    guarded = frozenset(loose & offered)
    if not guarded:
        return Guard()
    unvouched = frozenset(session.execute(_UNVOUCHED, {"b_tenant": tenant_id}).scalars())
    return Guard(pools=guarded, unvouched=unvouched)


_GUARDS = leases.table_of(TenantGuard)
_GUARD_VERSION = select(_GUARDS.c.version).where(_GUARDS.c.tenant_id == bindparam("b_tenant"))


def _raise_guard(session: leases.Unit, tenant_id: str) -> None:
    # An upsert of the tenant's row of its own: only guard changes lock it.
    bind = session if isinstance(session, Connection) else session.get_bind()
    ins = (pg_insert if bind.dialect.name == "postgresql" else sqlite_insert)(_GUARDS).values(
        tenant_id=tenant_id, version=1
    )
    session.execute(
        ins.on_conflict_do_update(
            index_elements=[_GUARDS.c.tenant_id], set_={"version": _GUARDS.c.version + 1}
        )
    )


_ANY = -1  # look again whatever the version then


def _watch(session: leases.Unit, tenant_id: str) -> None:
    """Before a refresh reads pools and guard: the tenant's guard version as this unit
    sees it, looked at again once the unit commits (``_look_again``)."""
    seen = session.execute(_GUARD_VERSION, {"b_tenant": tenant_id}).scalar()
    after_commit(_LookAgain(tenant_id, seen))


def guard_changed(session: leases.Unit, tenant_id: str) -> None:
    """After a write that may change a tenant's guard (who a pool is offered to, which
    centers are vouched for, what a pool names): raises the tenant's guard version, and
    looks again once this unit commits.

    Why both: a refresh on another broker may read the guard before this write commits
    and commit its members after this unit's own ``keep_guard`` looked. Either that
    refresh commits first, and this unit's look after its commit sees its members; or it
    commits later, and its own look after its commit sees the version moved. The
    version's row (``tenant_guards``) is taken after the tenant's membership (``hold``),
    which every writer that gets here holds first, so no order of locks can cross it;
    with that lock the two no longer overlap, and the looks remain a second line."""
    _raise_guard(session, tenant_id)
    after_commit(_LookAgain(tenant_id, _ANY))


@dataclass(frozen=True)
class _LookAgain:
    """``_look_again`` left for after a commit; equal by value, so a unit that changes
    the guard of one tenant many times looks once (``after_commit``)."""

    tenant_id: str
    seen: int | None

    def __call__(self, db: Database) -> None:
        _look_again(self.tenant_id, self.seen, db)


def _look_again(tenant_id: str, seen: int | None, db: Database) -> None:
    # Read first: most looks find nothing, and a write unit would queue behind every
    # writer (on SQLite, take the one write lock) for nothing.
    with db.read() as session:
        if (
            seen != _ANY
            and session.execute(_GUARD_VERSION, {"b_tenant": tenant_id}).scalar() == seen
        ):
            return
        if not breached(session, tenant_id):
            return
    with db.write() as session:
        if breached(session, tenant_id):
            refresh(session, tenant_id)


def breached(session: Session, tenant_id: str) -> bool:
    """Whether a pool offered to a global administrator may hold a desktop its guard
    keeps out: after a rule, policy or user changes who is offered what. Errs towards
    yes (a desktop such a pool built counts), which costs only a refresh."""
    pools = session.execute(
        select(Pool.id, Pool.center_ids, Pool.desktop_ids).where(Pool.tenant_id == tenant_id)
    ).all()
    fence = guard(session, tenant_id, pools)
    if not fence.pools or not fence.unvouched:
        return False
    found = session.execute(
        select(PoolMember.pool_id)
        .join(Desktop, Desktop.id == PoolMember.desktop_id)
        .where(PoolMember.pool_id.in_(fence.pools), Desktop.center_id.in_(fence.unvouched))
        .limit(1)
    ).first()
    return found is not None


# Where ``hold`` notes, per tenant, the transaction (or savepoint) that took the lock.
_HELD = "deskbroker.membership_held"
# Set on a unit a request opened (``bound_waits``).
_BOUNDED = "deskbroker.membership_bounded"
# A request's wait for its tenant's membership: the engine's units are bounded by their
# turns (``engine/turns.py``), a request's by these.
REQUEST_WAITS = advisory.BoundedWaits(
    # Of a process's 40 request threads: a script's burst of writes waits its turn, one
    # tenant waiting for its own long apply leaves most of them to the others.
    per_group=16,
    wait_s=10.0,
    what="another change of this tenant's pools or desktops (a configuration apply, say)",
)


def bound_waits(session: Session) -> None:
    """The unit serves a request (an administrator's write): its wait for the tenant's
    membership is bounded (``REQUEST_WAITS``) rather than as long as the holder's."""
    session.info[_BOUNDED] = True


def hold(session: leases.Unit, tenant_id: str) -> None:
    """On PostgreSQL, one unit at a time recomputes or changes a tenant's membership,
    until it commits: a transaction-scoped advisory lock (SQLite's one writer already
    orders them).

    Each statement of a unit sees what had committed when it began: two refreshes at
    once each judged the pools and desktops as they were before the other's commit, so
    the later one undid what the earlier one (an administrator's pool or desktop change)
    wrote, until the next refresh, and both inserting one new place failed the later
    unit on the duplicate. A unit that will refresh must take this before it locks or
    deletes a desktop or pool row, or changes a unique column of one (a pool's name):
    a refresh holding the lock waits for such a row as it inserts a place that refers
    to it, and the row's holder waiting for the lock would deadlock with it."""
    bind = session if isinstance(session, Connection) else session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    held: dict[str, object] | None = None
    within: object = None
    if isinstance(session, Session):
        # Once per transaction: a savepoint rolled back lets go of what it took.
        within = session.get_nested_transaction() or session.get_transaction()
        held = session.info.setdefault(_HELD, {})
        if held.get(tenant_id) is within:
            return
    name = f"membership:{tenant_id}"
    if isinstance(session, Session) and session.info.get(_BOUNDED):
        REQUEST_WAITS.xact_lock(session, name, tenant_id)
    else:
        advisory.xact_lock(session, name)
    if held is not None:
        held[tenant_id] = within


def refresh(session: Session, tenant_id: str) -> dict[str, set[str]]:
    """Recompute every pool of a tenant; returns pool id -> the desktops that joined."""
    hold(session, tenant_id)
    # Before anything the guard reads (``guard_changed`` says why).
    _watch(session, tenant_id)
    pools = session.scalars(select(Pool).where(Pool.tenant_id == tenant_id)).all()
    desktops = session.execute(
        select(
            Desktop.id,
            Desktop.center_id,
            Desktop.name,
            Desktop.address,
            Desktop.hostname,
            Desktop.os,
            Desktop.power_state,
            Desktop.attributes,
        ).where(Desktop.tenant_id == tenant_id, Desktop.power_state != "deleted")
    ).all()
    fence = guard(session, tenant_id, pools)
    wanted = members(
        [definition(p, fence.pools) for p in pools], [_facts(d, fence.unvouched) for d in desktops]
    )
    pool_ids = [p.id for p in pools]
    current: dict[str, set[str]] = {pid: set() for pid in pool_ids}
    if pool_ids:
        for pid, did in session.execute(
            select(PoolMember.pool_id, PoolMember.desktop_id).where(
                PoolMember.pool_id.in_(pool_ids)
            )
        ).all():
            current[pid].add(did)
    judged = _judged(session, {d.id for d in desktops}, current)
    joined: dict[str, set[str]] = {}
    written = 0
    for pid in pool_ids:
        add = wanted.get(pid, set()) - current[pid]
        drop = (current[pid] & judged) - wanted.get(pid, set())
        written += len(add) + len(drop)
        if drop:
            session.execute(
                delete(PoolMember).where(PoolMember.pool_id == pid, PoolMember.desktop_id.in_(drop))
            )
        if add:
            session.execute(
                insert(PoolMember), [{"pool_id": pid, "desktop_id": did} for did in sorted(add)]
            )
            joined[pid] = add
    # An import, a first scan or a new pool over a large center: the claim's plan needs
    # statistics that know these members (store/planner.py).
    refresh_statistics(session, written=written)
    return joined


def _judged(session: Session, read: set[str], current: dict[str, set[str]]) -> set[str]:
    """The members a refresh may drop: those whose desktop it read, and deleted ones.

    On PostgreSQL each statement sees what had committed when it began: a build (or an
    import) that commits between the desktops' read and the members' read has members
    whose desktop the refresh never saw. Dropping those took new desktops out of their
    pool, and the provisioner, counting them no more, built as many again."""
    unread = set().union(*current.values()) - read
    if not unread:
        return read
    deleted = session.scalars(
        select(Desktop.id).where(Desktop.id.in_(unread), Desktop.power_state == "deleted")
    ).all()
    return read | set(deleted)


def pool_members(session: Session, pool_id: str) -> list[str]:
    return list(
        session.scalars(select(PoolMember.desktop_id).where(PoolMember.pool_id == pool_id)).all()
    )


_POOLS = leases.table_of(Pool)
_DESKTOPS = leases.table_of(Desktop)
_MEMBERS = leases.table_of(PoolMember)
# Built once: a batch of finished builds runs these each time.
_TENANT_POOLS = select(
    _POOLS.c.id,
    _POOLS.c.center_ids,
    _POOLS.c.filters,
    _POOLS.c.desktop_ids,
    _POOLS.c.parent_pool_id,
    _POOLS.c.provisioning,
).where(_POOLS.c.tenant_id == bindparam("b_tenant"))
_DESKTOP_FACTS = select(
    _DESKTOPS.c.id,
    _DESKTOPS.c.center_id,
    _DESKTOPS.c.name,
    _DESKTOPS.c.address,
    _DESKTOPS.c.hostname,
    _DESKTOPS.c.os,
    _DESKTOPS.c.power_state,
    _DESKTOPS.c.attributes,
).where(_DESKTOPS.c.id.in_(bindparam("b_ids", expanding=True)))
_MEMBERSHIPS = select(_MEMBERS.c.pool_id, _MEMBERS.c.desktop_id).where(
    _MEMBERS.c.desktop_id.in_(bindparam("b_ids", expanding=True))
)


def refresh_desktops(session: leases.Unit, tenant_id: str, desktop_ids: list[str]) -> None:
    """Place a few desktops in every pool they belong to, without re-reading the tenant:
    what newly built desktops need, at a cost that does not grow with the pool. Core
    statements (in a session or on a bare connection): this runs for every batch of
    builds that finishes."""
    hold(session, tenant_id)
    # Before the pools: a pool written meanwhile moves the version too.
    _watch(session, tenant_id)
    pools = session.execute(_TENANT_POOLS, {"b_tenant": tenant_id}).all()
    if not pools:
        return
    desktops = session.execute(_DESKTOP_FACTS, {"b_ids": desktop_ids}).all()
    if not desktops:
        return
    fence = guard(session, tenant_id, pools)
    facts = [_facts(d, fence.unvouched) for d in desktops]
    definitions = [definition(p, fence.pools) for p in pools]
    current = {
        (pid, did) for pid, did in session.execute(_MEMBERSHIPS, {"b_ids": desktop_ids}).all()
    }
    wanted_by_pool = members(definitions, facts)
    wanted = {(pid, did) for pid, dids in wanted_by_pool.items() for did in dids}
    # Only the pools read here are judged: one made since (its members written with it)
    # keeps them (``_judged`` says why).
    read = {p.id for p in pools}
    for pid, did in {(pid, did) for pid, did in current if pid in read} - wanted:
        session.execute(
            delete(_MEMBERS).where(_MEMBERS.c.pool_id == pid, _MEMBERS.c.desktop_id == did)
        )
    add = sorted(wanted - current)
    if add:
        session.execute(insert(_MEMBERS), [{"pool_id": p, "desktop_id": d} for p, d in add])


@dataclass(frozen=True)
class _Loose:
    """A candidate definition as ``guard`` reads a pool row."""

    id: str
    center_ids: Collection[str]
    desktop_ids: Collection[str]


def preview(
    session: Session, tenant_id: str, candidate: PoolDefinition, replacing: str | None
) -> tuple[list[Any], dict[str, list[str]]]:
    """What ``candidate`` would hold among the tenant's desktops, the other pools kept as
    they are (``replacing``: the pool whose definition it stands in for). Returns its
    desktops (id, name, power_state, availability, assigned_user_id, username) by name,
    and for each of them the names of the other pools that hold it now. Reads only."""
    rows_of_pools = session.scalars(select(Pool).where(Pool.tenant_id == tenant_id)).all()
    # The candidate as it would be saved: guarded when the pool it replaces is offered
    # to a global administrator and it too would name neither centers nor desktops.
    fence = guard(
        session,
        tenant_id,
        [*rows_of_pools, _Loose(candidate.pool_id, candidate.center_ids, candidate.desktop_ids)],
    )
    candidate = replace(candidate, guarded=candidate.pool_id in fence.pools)
    pools = [definition(p, fence.pools) for p in rows_of_pools if p.id != replacing]
    rows = session.execute(
        select(
            Desktop.id,
            Desktop.center_id,
            Desktop.name,
            Desktop.address,
            Desktop.hostname,
            Desktop.os,
            Desktop.power_state,
            Desktop.attributes,
            Desktop.availability,
            Desktop.assigned_user_id,
            User.username,
        )
        .outerjoin(User, User.id == Desktop.assigned_user_id)
        # Not those being removed: the provisioner no longer counts them either.
        .where(
            Desktop.tenant_id == tenant_id,
            Desktop.power_state.not_in((PowerState.DELETING.value, PowerState.DELETED.value)),
        )
        .order_by(Desktop.name)
    ).all()
    taken = members([*pools, candidate], [_facts(r, fence.unvouched) for r in rows]).get(
        candidate.pool_id, set()
    )
    chosen = [r for r in rows if r.id in taken]
    others: dict[str, list[str]] = {}
    if chosen:
        held = session.execute(
            select(PoolMember.desktop_id, Pool.name)
            .join(Pool, Pool.id == PoolMember.pool_id)
            .where(Pool.tenant_id == tenant_id, Pool.id != (replacing or ""))
            .order_by(Pool.name)
        ).all()
        for desktop_id, name in held:
            if desktop_id in taken:
                others.setdefault(desktop_id, []).append(name)
    return chosen, others
