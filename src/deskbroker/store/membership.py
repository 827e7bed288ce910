"""Keeps the materialised ``pool_members`` table true to the pools' definitions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from deskbroker.domain.membership import (
    DesktopFacts,
    PoolDefinition,
    filters_from_stored,
    members,
)
from deskbroker.domain.provisioning import Provisioning
from deskbroker.domain.states import PowerState
from deskbroker.store import leases
from deskbroker.store.planner import refresh_statistics
from deskbroker.store.tables import Desktop, Pool, PoolMember, User


def build_centers(center_ids: list[str] | None, provisioning: Any) -> frozenset[str]:
    """The centers a pool builds in, from its stored provisioning (a stored one that no
    longer reads: none)."""
    try:
        return frozenset(Provisioning.from_stored(provisioning).build_centers(center_ids))
    except ValueError:
        return frozenset()


def definition(pool: Any) -> PoolDefinition:
    """A pool row (ORM or Core: id, center_ids, filters, desktop_ids, parent_pool_id,
    provisioning) as the definition membership computes with."""
    return PoolDefinition(
        pool_id=pool.id,
        center_ids=frozenset(pool.center_ids or []),
        filters=filters_from_stored(pool.filters),
        desktop_ids=frozenset(pool.desktop_ids or []),
        parent_pool_id=pool.parent_pool_id,
        build_center_ids=build_centers(pool.center_ids, pool.provisioning),
    )


def _facts(row: Any) -> DesktopFacts:
    fields: dict[str, Any] = dict(row.attributes or {})
    fields.update(
        name=row.name,
        address=row.address,
        hostname=row.hostname,
        os=row.os,
        power_state=row.power_state,
    )
    return DesktopFacts(desktop_id=row.id, center_id=row.center_id, fields=fields)


def refresh(session: Session, tenant_id: str) -> dict[str, set[str]]:
    """Recompute every pool of a tenant; returns pool id -> the desktops that joined."""
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
    wanted = members([definition(p) for p in pools], [_facts(d) for d in desktops])
    pool_ids = [p.id for p in pools]
    current: dict[str, set[str]] = {pid: set() for pid in pool_ids}
    if pool_ids:
        for pid, did in session.execute(
            select(PoolMember.pool_id, PoolMember.desktop_id).where(
                PoolMember.pool_id.in_(pool_ids)
            )
        ).all():
            current[pid].add(did)
    joined: dict[str, set[str]] = {}
    written = 0
    for pid in pool_ids:
        add = wanted.get(pid, set()) - current[pid]
        drop = current[pid] - wanted.get(pid, set())
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
    pools = session.execute(_TENANT_POOLS, {"b_tenant": tenant_id}).all()
    if not pools:
        return
    desktops = session.execute(_DESKTOP_FACTS, {"b_ids": desktop_ids}).all()
    if not desktops:
        return
    facts = [_facts(d) for d in desktops]
    definitions = [definition(p) for p in pools]
    current = {
        (pid, did) for pid, did in session.execute(_MEMBERSHIPS, {"b_ids": desktop_ids}).all()
    }
    wanted_by_pool = members(definitions, facts)
    wanted = {(pid, did) for pid, dids in wanted_by_pool.items() for did in dids}
    for pid, did in current - wanted:
        session.execute(
            delete(_MEMBERS).where(_MEMBERS.c.pool_id == pid, _MEMBERS.c.desktop_id == did)
        )
    add = sorted(wanted - current)
    if add:
        session.execute(insert(_MEMBERS), [{"pool_id": p, "desktop_id": d} for p, d in add])


def preview(
    session: Session, tenant_id: str, candidate: PoolDefinition, replacing: str | None
) -> tuple[list[Any], dict[str, list[str]]]:
    """What ``candidate`` would hold among the tenant's desktops, the other pools kept as
    they are (``replacing``: the pool whose definition it stands in for). Returns its
    desktops (id, name, power_state, availability, assigned_user_id, username) by name,
    and for each of them the names of the other pools that hold it now. Reads only."""
    pools = [
        definition(p)
        for p in session.scalars(select(Pool).where(Pool.tenant_id == tenant_id)).all()
        if p.id != replacing
    ]
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
    taken = members([*pools, candidate], [_facts(r) for r in rows]).get(candidate.pool_id, set())
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
