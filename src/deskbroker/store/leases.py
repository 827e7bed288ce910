"""Leases on rows (jobs, timers, provisioning tasks) so a cluster shares the work.

A row is claimed with one statement; PostgreSQL skips rows another broker is claiming,
SQLite serialises writers. A lease that expires (its broker died) is claimable again.

The statements are Core (on the table, not the mapped class): they run on the engine's
hot path, where the ORM's bookkeeping would cost more than the SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Row,
    Table,
    Update,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

# Leases are taken and let go in ORM sessions and in Core connections alike.
Unit = Session | Connection


def table_of(model: Any) -> Table:
    """The table behind a mapped class (or the table itself)."""
    return model if isinstance(model, Table) else cast(Table, model.__table__)


def lease_free(table: Table, now: Any) -> ColumnElement[bool]:
    """Not leased, or the lease expired (``now`` may be a bound parameter)."""
    return or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)


def claim_due(
    session: Session,
    model: Any,
    due_column: Any,
    *,
    owner: str,
    now: datetime,
    ttl_s: float,
    limit: int = 1,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[str]:
    """Lease up to ``limit`` rows that are due and not leased; returns their ids."""
    free = or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
    candidates = (
        select(model.id)
        .where(due_column <= now, free, *where)
        .order_by(due_column)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(model)
        .where(model.id.in_(candidates), free)
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s))
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [str(r[0]) for r in rows]


def claim_statement(
    table: Table,
    *,
    returning: Sequence[Any],
    due_column: Any = None,
    where: Sequence[ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
) -> Update:
    """The statement of ``claim_rows``, to build once and run often: bind ``now``,
    ``until`` (the lease's end), ``owner`` and ``limit``, and whatever ``where`` and
    ``values`` bind themselves."""
    now = bindparam("now", type_=table.c.lease_expires_at.type)
    free = lease_free(table, now)
    candidates = select(table.c.id).where(free, *where)
    if due_column is not None:
        candidates = candidates.where(due_column <= now).order_by(due_column)
    candidates = candidates.limit(bindparam("limit", type_=Integer)).with_for_update(
        skip_locked=True
    )
    return (
        update(table)
        .where(table.c.id.in_(candidates), free)
        .values(
            lease_owner=bindparam("owner"), lease_expires_at=bindparam("until"), **(values or {})
        )
        .returning(*returning)
    )


def claim_params(*, owner: str, now: datetime, ttl_s: float, limit: int) -> dict[str, Any]:
    return {"now": now, "until": now + timedelta(seconds=ttl_s), "owner": owner, "limit": limit}


def claim_rows(
    session: Unit,
    table: Table,
    *,
    owner: str,
    now: datetime,
    ttl_s: float,
    returning: Sequence[Any],
    limit: int,
    due_column: Any = None,
    where: Sequence[ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
) -> Sequence[Row[Any]]:
    """Lease up to ``limit`` free rows (due ones, oldest first, when ``due_column`` is
    given), writing ``values`` along with the lease, and return the ``returning``
    columns of those taken, as they are after the update: one statement, so the work
    that follows need not read its rows again."""
    statement = claim_statement(
        table, returning=returning, due_column=due_column, where=where, values=values
    )
    return session.execute(
        statement, claim_params(owner=owner, now=now, ttl_s=ttl_s, limit=limit)
    ).all()


def release(session: Unit, model: Any, row_id: str, owner: str, **values: Any) -> bool:
    """Drop our lease and write the outcome; a no-op if another broker took it over."""
    table = table_of(model)
    result = session.execute(
        update(table)
        .where(table.c.id == row_id, table.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


class LeaseLost(Exception):
    """Raised inside a unit of work whose outcome belongs to a lease its writer no longer
    holds (its node was reaped, or the lease ran out and another node took the row): the
    unit rolls back whole, so nothing the lost work decided is committed (the fence)."""

    def __init__(self, model: Any, row_id: str) -> None:
        super().__init__(f"{table_of(model).name} {row_id}: the lease passed to another node")


def release_held(session: Unit, model: Any, row_id: str, owner: str, **values: Any) -> None:
    """``release``, for a unit whose other writes are the lease's outcome: called first in
    the unit, it raises ``LeaseLost`` when another broker took the row over, so the
    caller's unit rolls back and none of those writes is committed."""
    if not release(session, model, row_id, owner, **values):
        raise LeaseLost(model, row_id)


def renew_held(session: Unit, model: Any, row_id: str, owner: str, until: datetime) -> None:
    """``extend``, before an irreversible act done for the lease (terminating an
    instance): raises ``LeaseLost`` when the row is another broker's now."""
    if not extend(session, model, row_id, owner, until):
        raise LeaseLost(model, row_id)


def extend(session: Unit, model: Any, row_id: str, owner: str, until: datetime) -> bool:
    table = table_of(model)
    result = session.execute(
        update(table)
        .where(table.c.id == row_id, table.c.lease_owner == owner)
        .values(lease_expires_at=until)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# The longest one call to a center may take (a center's ``timeout_s`` is at most this):
# an act a lost lease's holder started is over by the time its lease ran out plus this.
CLOUD_CALL_BOUND_S = 600.0


def extend_all(
    session: Unit, model: Any, row_ids: Sequence[str], owner: str, until: datetime
) -> int:
    """``extend`` for many rows at once (the leases of the work a node is running);
    returns how many are still ``owner``'s."""
    if not row_ids:
        return 0
    table = table_of(model)
    result = session.execute(
        update(table)
        .where(table.c.id.in_(list(row_ids)), table.c.lease_owner == owner)
        .values(lease_expires_at=until)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
