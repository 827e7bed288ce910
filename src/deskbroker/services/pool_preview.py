"""What a pool definition would take before it is saved: its desktops, the users who hold
them, the other pools that share them, and what provisioning would do at once.

The definition is checked exactly as saving it would be (``pool_catalog``), so a preview
refuses what the save would refuse, another tenant's objects included; nothing is written.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from deskbroker.domain import provisioning
from deskbroker.domain.provisioning import Provisioning
from deskbroker.domain.states import is_coming_free, is_free
from deskbroker.security import TokenClaims
from deskbroker.services import pool_catalog
from deskbroker.services.catalog_crud import target_tenant
from deskbroker.services.context import BrokerContext
from deskbroker.services.write_context import attach_actor
from deskbroker.store import membership, pool_status
from deskbroker.store.repository import Repository
from deskbroker.store.tables import Pool

# The preview lists at most this many desktops (the counts cover them all).
SHOWN = 200
PREVIEW_ID = "preview"


@dataclass(frozen=True)
class PreviewDesktop:
    id: str
    name: str
    power_state: str
    availability: str
    user: str | None
    other_pools: list[str]


@dataclass(frozen=True)
class PoolPreview:
    tenant_id: str
    total: int
    assigned: int
    free: int
    desktops: list[PreviewDesktop]
    users: list[str]
    shared: int
    min_unassigned: int | None
    max_total: int | None
    to_create: int
    to_retire: int
    summary: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def preview(
    ctx: BrokerContext,
    who: TokenClaims,
    data: dict[str, Any],
    pool_id: str | None,
    own_keys: Collection[str],
    now: datetime | None = None,
) -> PoolPreview:
    """Which desktops and users ``data`` (a pool's full definition, as created) would
    take; ``pool_id``: the pool it would replace (an edit), whose queue counts too.
    The definition is read in the tenant a create would put it in (the caller's, or the
    one a global administrator names in ``tenant_id``), and ``pool_id`` must be there."""
    with ctx.db.read() as session:
        attach_actor(session, ctx, who)
        tenant = target_tenant(session, who, data.pop("tenant_id", None))
        existing = Repository(Pool, "pool").get(session, pool_id, tenant) if pool_id else None
        data = pool_catalog.check_definition(session, tenant, data, existing, frozenset(own_keys))
        # Read as membership reads the saved row (``membership.definition``), so the
        # preview takes what the pool will: its build centers' marked desktops too.
        candidate = membership.definition(
            SimpleNamespace(
                id=existing.id if existing else PREVIEW_ID,
                center_ids=data.get("center_ids"),
                filters=data.get("filters"),
                desktop_ids=data.get("desktop_ids"),
                parent_pool_id=data.get("parent_pool_id"),
                provisioning=data.get("provisioning"),
            )
        )
        rows, others = membership.preview(session, tenant, candidate, pool_id)
        waiting = pool_status.queue_length(session, existing.id) if existing else 0
    free = sum(
        1 for r in rows if is_free(r.power_state, r.availability, r.assigned_user_id is not None)
    )
    assigned = sum(1 for r in rows if r.assigned_user_id is not None)
    users = sorted({r.username for r in rows if r.username})
    prov = Provisioning.from_stored(data.get("provisioning"))
    to_create = to_retire = 0
    limits = None
    if prov.enabled:
        limits = provisioning.targets(prov, now or datetime.now(UTC))
        # Counted as the provisioner counts the saved pool (``store.provisioning``): a
        # desktop being built, or (built unavailable) waiting for an administrator, is
        # about to be free.
        later = prov.parameters.start_unavailable
        coming = sum(
            1
            for r in rows
            if is_coming_free(r.power_state, r.availability, r.assigned_user_id is not None, later)
        )
        counts = provisioning.PoolCounts(
            total=len(rows), unassigned=free + coming, waiting_users=waiting, in_flight=0
        )
        to_create = provisioning.to_create(limits, counts)
        to_retire = provisioning.to_retire(limits, counts)
    shared = sum(1 for r in rows if others.get(r.id))
    words = [
        f"This pool would take {_plural(len(rows), 'desktop')}: {assigned} assigned"
        + (
            f" (to {', '.join(users[:5])}{' and others' if len(users) > 5 else ''})"
            if users
            else ""
        )
        + f", {free} free."
    ]
    if shared:
        words.append(f"{_plural(shared, 'desktop')} of them already belong to another pool.")
    if limits is None:
        words.append("It builds nothing: it holds what its centers' scans find.")
    elif to_create:
        words.append(
            f"Saved now, the broker would build {_plural(to_create, 'desktop')} at once "
            f"(keep {limits.min_unassigned} free, at most {limits.max_total} in all"
            + (f", {limits.window}" if limits.window else "")
            + ")."
        )
    elif to_retire:
        words.append(
            f"It is above its maximum of {limits.max_total}: "
            f"{_plural(to_retire, 'free desktop')} would be removed."
        )
    else:
        words.append(
            f"Provisioning would build nothing now: {free} free of the "
            f"{limits.min_unassigned} to keep, {len(rows)} of at most {limits.max_total}."
        )
    return PoolPreview(
        tenant_id=tenant,
        total=len(rows),
        assigned=assigned,
        free=free,
        desktops=[
            PreviewDesktop(
                r.id, r.name, r.power_state, r.availability, r.username, others.get(r.id, [])
            )
            for r in rows[:SHOWN]
        ],
        users=users,
        shared=shared,
        min_unassigned=limits.min_unassigned if limits else None,
        max_total=limits.max_total if limits else None,
        to_create=to_create,
        to_retire=to_retire,
        summary=" ".join(words),
    )
