"""Per-tenant quotas enforced: desktops (builds, scans) and concurrent sessions (connects).

Every check runs in the caller's write transaction, after locking the tenant's row, so
the count it reads and the row it then writes cannot interleave with another broker's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from deskbroker.domain import quotas as words_for
from deskbroker.domain.quotas import TenantQuota, room
from deskbroker.errors import QuotaReached
from deskbroker.services.context import BrokerContext
from deskbroker.store import events
from deskbroker.store import quotas as store
from deskbroker.store.db import Unit
from deskbroker.store.tables import Desktop, utcnow


@dataclass(frozen=True)
class DesktopRoom:
    """How many more desktops the tenant may have; ``room`` is ``None`` when unlimited."""

    limit: int | None
    used: int
    room: int | None

    def words(self, used: int | None = None) -> str:
        return words_for.words(self.used if used is None else used, self.limit, "desktops")


def desktop_room(session: Unit, tenant_id: str) -> DesktopRoom:
    """Lock the tenant (when it has a desktop quota) and count its desktops."""
    quota = store.read(session, tenant_id)
    if quota.desktops is None:
        return DesktopRoom(None, 0, None)
    quota = store.read(session, tenant_id, lock=True)  # the limit as of the lock
    used = store.desktops_used(session, tenant_id)
    return DesktopRoom(quota.desktops, used, room(quota.desktops, used))


def admit_session(
    session: Unit,
    ctx: BrokerContext,
    desktop: Desktop,
    *,
    grant: bool,
    now: datetime | None = None,
) -> None:
    """Refuse a connect that would start a session beyond the tenant's quota.

    A connect to a desktop already in session (or granted a moment ago) resumes that
    session and is always let through. With ``grant`` the desktop is marked as handed
    out, which holds a unit of the quota until the agent reports the session.
    """
    now = now or utcnow()
    since = now - timedelta(seconds=ctx.settings.session_grant_s)
    if desktop.tenant_id in ctx.cache.current(ctx.db).session_quota_tenants:
        # The row, locked, is the truth; the cache only spares tenants without a quota
        # the read (a quota set a moment ago applies within the cache's few seconds).
        quota = store.read(session, desktop.tenant_id, lock=True)
    else:
        quota = TenantQuota(desktops=None, sessions=None)
    if quota.sessions is not None and not store.in_session(session, desktop.id, since):
        used = store.sessions_used(session, desktop.tenant_id, since)
        if used >= quota.sessions:
            raise QuotaReached(
                f"{words_for.words(used, quota.sessions, 'concurrent sessions')} are in use, "
                "so no new session can start now; try again when one ends (a session you "
                "already have can still be resumed)",
                quota="sessions",
                used=used,
                limit=quota.sessions,
            )
    if grant:
        desktop.connect_granted_at = now


def record_refusal(
    ctx: BrokerContext,
    tenant_id: str,
    actor: str,
    user_id: str | None,
    desktop_id: str | None,
    refused: QuotaReached,
) -> None:
    """A ``quota.reached`` event (webhooks of kind ``quota_reached`` get it), written in
    a unit of its own after the refused one rolled back."""
    with ctx.db.write() as session:
        events.append(
            session,
            "quota.reached",
            tenant_id=tenant_id,
            actor=actor,
            user_id=user_id,
            desktop_id=desktop_id,
            detail={**refused.extra, "message": refused.detail},
        )


def usage(session: Unit, ctx: BrokerContext, tenant_id: str) -> dict[str, object]:
    """The tenant's limits and what it uses now, in numbers and words."""
    quota: TenantQuota = store.read(session, tenant_id)
    since = utcnow() - timedelta(seconds=ctx.settings.session_grant_s)
    desktops = store.desktops_used(session, tenant_id)
    sessions = store.sessions_used(session, tenant_id, since)
    return {
        "tenant_id": tenant_id,
        "desktops": {"limit": quota.desktops, "used": desktops},
        "sessions": {"limit": quota.sessions, "used": sessions},
        "summary": (
            f"{words_for.words(desktops, quota.desktops, 'desktops')}; "
            f"{words_for.words(sessions, quota.sessions, 'concurrent sessions')}"
        ),
    }
