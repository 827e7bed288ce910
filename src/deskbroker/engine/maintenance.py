"""Periodic upkeep: center scans, leak sweeps, pool statistics and retention."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from deskbroker.centers.base import Capability
from deskbroker.engine.drivers import DriverCache
from deskbroker.engine.provisioner import builds_unavailable, pool_counts
from deskbroker.errors import CenterError
from deskbroker.services import inventory
from deskbroker.services.context import BrokerContext
from deskbroker.store import events, upkeep
from deskbroker.store.tables import Center, Pool

log = logging.getLogger(__name__)


def scan_center(ctx: BrokerContext, drivers: DriverCache, center_id: str, now: datetime) -> str:
    """The scan job: the center is asked with no transaction open (a center that never
    answers holds this worker, not the database)."""
    report = inventory.scan_center(ctx, center_id, driver_of=drivers.get)
    return "center is gone" if report is None else report.message


def leak_sweep(ctx: BrokerContext, drivers: DriverCache, center_id: str, now: datetime) -> str:
    """Report (and, when the center allows it, remove) instances tagged as ours that
    no desktop or provisioning task accounts for."""
    with ctx.db.read() as session:
        center = session.get(Center, center_id)
        if center is None:
            return "center is gone"
        seen = upkeep.accounted(session, center_id)
    driver = drivers.get(center)
    # A task still creating may own an instance we have not recorded yet.
    if Capability.LEAK_SWEEP not in driver.capabilities or seen.creating:
        return "nothing to sweep"
    leaked = driver.leaked(seen.external_ids, center_id=center_id)
    if leaked:
        # The listing came after that read: a build may have created and recorded an
        # instance in between, or begun creating one. Only what the broker still cannot
        # account for after the listing is a leak.
        with ctx.db.read() as session:
            seen = upkeep.accounted(session, center_id)
        if seen.creating:
            return "nothing to sweep"
        leaked = [m for m in leaked if m.external_id not in seen.external_ids]
    reap = bool((center.params or {}).get("reap_leaks", False))
    # One instance the center will not remove (locked, a network error) must not keep
    # the others, nor the event, from every sweep: the listing comes in the same order.
    failed: list[dict[str, str]] = []
    for machine in leaked if reap else []:
        try:
            driver.terminate(machine)
        except CenterError as exc:
            log.warning(
                "removing leaked instance %s on center %s: %s",
                machine.external_id,
                center.name,
                exc.detail,
            )
            failed.append({"instance": machine.external_id, "error": exc.detail[:500]})
    if leaked:
        detail: dict[str, Any] = {
            "center": center.name,
            "instances": [m.external_id for m in leaked],
            "removed": reap,
        }
        if reap:
            detail["failed"] = failed
        with ctx.db.write() as session:
            events.append(
                session, "leak", tenant_id=center.tenant_id, actor="engine", detail=detail
            )
    if not reap or not leaked:
        return f"{len(leaked)} leaked instance(s)"
    if failed:
        return (
            f"{len(leaked)} leaked instance(s), {len(leaked) - len(failed)} removed, "
            f"{len(failed)} could not be removed"
        )
    return f"{len(leaked)} leaked instance(s) removed"


def pool_stats(ctx: BrokerContext, drivers: DriverCache, pool_id: str, now: datetime) -> str:
    with ctx.db.write() as session:
        pool = session.get(Pool, pool_id)
        if pool is None:
            return "pool is gone"
        # Counted as the provisioner counts them: in a pool that builds its desktops
        # unavailable, a finished one waiting for an administrator is unassigned.
        counts = pool_counts(
            session, pool_id, starts_unavailable=builds_unavailable(pool.provisioning)
        )
        upkeep.add_pool_stat(session, pool_id, now, counts)
    return "sampled"


def retention(ctx: BrokerContext, drivers: DriverCache, target: str, now: datetime) -> str:
    """Drop events, statistics and ended sessions older than their retention; finished
    tasks (failed ones kept as long as the events) and spent sign-in leftovers too."""
    settings = ctx.settings
    keep = upkeep.Retention(
        event_days=settings.event_retention_days,
        stats_days=settings.stats_retention_days,
        session_days=settings.session_retention_days,
        login_failure_window_s=settings.login_failure_window_s,
    )
    with ctx.db.write() as session:
        purged = upkeep.purge(session, now, keep)
    return (
        f"removed {purged.events} events, {purged.samples} samples, {purged.sessions} ended "
        f"sessions, {purged.failed_builds} failed builds and {purged.sign_in_leftovers} "
        "sign-in leftovers"
    )
