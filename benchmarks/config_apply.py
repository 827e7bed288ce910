#!/usr/bin/env python3
"""Config apply benchmark: one configuration document with N pools applied to an empty
tenant, then applied again with every pool changed, then once more unchanged (issue 14:
the apply refreshed every pool's membership after each pool it wrote).

The document holds one static center of ``--desktops`` machines (scanned in the save:
the static driver lists its params), and N pools: ``all`` (the center's every machine)
and N - 1 over it, a third by an explicit list of two machines, a third by a name
filter, a third by a name filter nested in ``all``; and one policy offering ten pools.

Usage::

    .venv/bin/python benchmarks/config_apply.py --pools 100,300,1000 --json
    .venv/bin/python benchmarks/config_apply.py --pools 300 --db postgresql://postgres@127.0.0.1:5432/postgres

Prints, per N: ``create_s`` (the first apply: the center, its desktops and every pool),
``update_s`` (every pool's filter or list and description changed), ``unchanged_s`` (the
same document again) and the SQL statements each sent (``*_sql``), and the members
the pools hold after it (to check one run against another).

Then a second update (``contended_s``, every pool moved on again) while another
tenant's administrator renames one of its pools over and over through the pool catalog:
``other_tenant_write_ms``, the slowest and the median of those renames (on SQLite, whose
one writer serialises them, the slowest is about the apply's length), and
``other_tenant_writes``, how many went through during that update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import func, select

from _cloud import broker, emit
from deskbroker.api.admin.config import ConfigDocument, _catalogs
from deskbroker.metrics import SQL_STATEMENTS
from deskbroker.security import TokenClaims
from deskbroker.services import config_code
from deskbroker.services.context import BrokerContext
from deskbroker.store.tables import PoolMember, Tenant


def document(pools: int, desktops: int, round_: int) -> dict[str, Any]:
    """The document of ``pools`` pools (``all`` and ``pools - 1`` of one or two machines
    each) over ``desktops`` machines; ``round_`` 1 moves every pool one machine on (its
    list or filter) and rewrites its description, so each pool is an update."""
    machines = [
        {"name": f"d{k:04d}", "address": f"127.1.{k // 250}.{1 + k % 250}"} for k in range(desktops)
    ]
    entries: list[dict[str, Any]] = [{"name": "all", "centers": ["lab"]}]
    for i in range(pools - 1):
        k = i + round_
        pool: dict[str, Any] = {"name": f"p{i:04d}", "description": f"round {round_}"}
        if i % 3 == 0:
            pool["desktops"] = [
                {"center": "lab", "name": f"d{(k + j) % desktops:04d}"} for j in range(2)
            ]
        else:
            pool["centers"] = ["lab"]
            pool["filters"] = [
                {"attribute": "name", "op": "equals", "value": f"d{k % desktops:04d}"}
            ]
            if i % 3 == 2:
                pool["parent"] = "all"
        entries.append(pool)
    raw = {
        "centers": [{"name": "lab", "kind": "static", "params": {"machines": machines}}],
        "pools": entries,
        "policies": [
            {"name": "staff", "entries": [{"pool": f"p{i:04d}"} for i in range(min(10, pools - 1))]}
        ],
    }
    # As the admin API hands it to the service: validated, defaults filled in.
    body = ConfigDocument.model_validate(raw)
    named = body.model_fields_set
    return {k: v for k, v in body.model_dump(mode="json").items() if k in named}


def timed_apply(
    ctx: BrokerContext, who: TokenClaims, tenant_id: str, doc: dict[str, Any]
) -> tuple[float, int, int]:
    """Seconds, SQL statements and changes of one apply."""
    catalogs = _catalogs()
    statements = SQL_STATEMENTS._value.get()
    started = time.perf_counter()
    outcome = config_code.apply(ctx, who, tenant_id, doc, catalogs)
    wall = time.perf_counter() - started
    return wall, int(SQL_STATEMENTS._value.get() - statements), len(outcome.changes)


def _claims(tenant_id: str, role: str) -> TokenClaims:
    return TokenClaims(
        user_id="bench",
        tenant_id=tenant_id,
        role=role,
        username="bench",
        expires_at=int(time.time()) + 3600,
        token_id="bench",
    )


class OtherTenant:
    """Another tenant's administrator renaming a pool of its own in a loop, each rename
    timed, until told to stop."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        with ctx.db.write() as session:
            tenant = Tenant(name="other", display_name="other")
            session.add(tenant)
            session.flush()
            self.who = _claims(tenant.id, "tenant_admin")
        catalog = _catalogs()["pools"]
        self.catalog = catalog
        made = catalog.create(ctx, self.who, {"name": "theirs"}, lambda row: {"id": row.id})
        self.pool_id = str(made["id"])
        self.took_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.perf_counter()
            self.catalog.update(
                self.ctx, self.who, self.pool_id, {"description": f"rename {n}"}, lambda row: {}
            )
            self.took_ms.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)

    def __enter__(self) -> OtherTenant:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_size(db: str | None, pools: int, desktops: int) -> dict[str, Any]:
    with broker(db) as ctx:
        with ctx.db.read() as session:
            tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == "default")).one()
        who = _claims(tenant_id, "global_admin")
        first, second = document(pools, desktops, 0), document(pools, desktops, 1)
        create_s, create_sql, created = timed_apply(ctx, who, tenant_id, first)
        update_s, update_sql, updated = timed_apply(ctx, who, tenant_id, second)
        unchanged_s, unchanged_sql, _ = timed_apply(ctx, who, tenant_id, second)
        # Last, so the other tenant's statements count in no figure above.
        with OtherTenant(ctx) as other:
            contended_s, _, _ = timed_apply(ctx, who, tenant_id, document(pools, desktops, 2))
        with ctx.db.read() as session:
            held = session.scalar(select(func.count()).select_from(PoolMember))
    return {
        "pools": pools,
        "desktops": desktops,
        "create_s": round(create_s, 2),
        "create_sql": create_sql,
        "created": created,
        "update_s": round(update_s, 2),
        "update_sql": update_sql,
        "updated": updated,
        "unchanged_s": round(unchanged_s, 2),
        "unchanged_sql": unchanged_sql,
        "members": int(held or 0),
        "contended_s": round(contended_s, 2),
        "other_tenant_writes": len(other.took_ms),
        "other_tenant_write_ms": {
            "max": round(max(other.took_ms), 1) if other.took_ms else None,
            "p50": round(statistics.median(other.took_ms), 1) if other.took_ms else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", default="100,300,1000", help="pool counts, comma-separated")
    parser.add_argument("--desktops", type=int, default=200, help="machines of the center")
    parser.add_argument("--db", default=None, help="database URL (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sizes = [int(n) for n in args.pools.split(",") if n.strip()]
    backend = "postgresql" if args.db and args.db.startswith("postgresql") else "sqlite"
    runs = [one_size(args.db, n, args.desktops) for n in sizes]
    if args.json:
        emit({"backend": backend, "runs": runs}, True, "config apply")
        return 0
    for run in runs:
        emit({"backend": backend, **run}, False, f"config apply, {run['pools']} pools")
    return 0


if __name__ == "__main__":
    sys.exit(main())
