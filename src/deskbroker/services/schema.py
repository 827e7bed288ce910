"""Schema upgrades in a running cluster (``deskbroker db upgrade``).

Expand migrations are safe while older nodes run, so they are always applied. Contract
migrations remove what an older node still uses: they are applied only when asked for,
and refused while a node of another version still beats, unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deskbroker import __version__
from deskbroker.errors import Conflict
from deskbroker.services.context import BrokerContext
from deskbroker.store import migrate, nodes
from deskbroker.store.migrate import MIGRATIONS, Outcome
from deskbroker.store.tables import utcnow


@dataclass(frozen=True)
class Plan:
    """What ``db upgrade`` would apply: expand and contract migrations, oldest first."""

    expand: tuple[str, ...]
    contract: tuple[str, ...]
    ahead: bool


def plan(ctx: BrokerContext, migrations: Path = MIGRATIONS) -> Plan:
    todo, ahead = migrate.pending(ctx.db, migrations)
    expand: list[str] = []
    contract: list[str] = []
    for script in todo:
        phase = migrate.phase_of(script)
        # Once one contract migration waits, everything after it waits with it.
        (contract if contract or phase is migrate.Phase.CONTRACT else expand).append(
            script.revision
        )
    return Plan(tuple(expand), tuple(contract), ahead)


def other_versions(ctx: BrokerContext) -> dict[str, str]:
    """Live nodes (heartbeat within node_dead_after_s) running another version than this
    code, by node id."""
    if migrate.current_revision(ctx.db) is None:
        return {}  # no schema yet, so no node can be running on it
    with ctx.db.connect_read() as conn:
        live = nodes.live_versions(conn, utcnow(), ctx.settings.node_dead_after_s)
    return {node: version for node, version in live.items() if version != __version__}


def upgrade(
    ctx: BrokerContext,
    *,
    contract: bool = False,
    force: bool = False,
    migrations: Path = MIGRATIONS,
) -> Outcome:
    """Apply the expand migrations, and the contract ones when ``contract`` is set and no
    node of another version runs (``force`` skips that check)."""
    if contract and not force and plan(ctx, migrations).contract:
        others = other_versions(ctx)
        if others:
            listed = ", ".join(f"{node} ({version})" for node, version in sorted(others.items()))
            raise Conflict(
                f"nodes of another version still run: {listed}. Contract migrations remove "
                f"what they use; upgrade or stop them first (or --force), this is {__version__}"
            )
    return migrate.upgrade(ctx.db, contract=contract, migrations=migrations)
