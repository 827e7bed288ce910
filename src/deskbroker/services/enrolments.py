"""Tenant enrolment keys: agents on machines the broker did not build enrol without a
per-desktop secret.

A tenant administrator mints a key (shown once; only its SHA-256 is stored) and puts it
in the agent's ``enrolment_token``, e.g. in a golden image. An agent presenting it is
matched to its desktop row, in the key's tenant only, by the instance id its metadata
service gives, else by one of its addresses. A match that is unique and whose desktop has
no enrolled agent yet gets its credential at once. Anything else (no match, several, a
desktop whose agent enrolled already, which a key holder must not be able to take over)
waits: the agent receives a poll handle (also kept hashed) and asks again until an
administrator approves it for a desktop, denies it, or it expires
(``domain.states.ENROLMENT_TRANSITIONS``).

Either way the agent gets the desktop's agent token, so the stronger-account rule of
minting that token (``standing.check_reach``) applies: an approval is refused for a
desktop the approver may not reach, and a key never enrols at once the agent of a
desktop an account stronger than its creator holds or is offered (``_key_refusal``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deskbroker.domain.permissions import BuiltinRole
from deskbroker.domain.states import ENROLMENT_TRANSITIONS, EnrolmentState, transition
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services import standing, write_context
from deskbroker.services.agents import AgentIdentity, Credential, grant
from deskbroker.services.context import BrokerContext
from deskbroker.store import enrolments as rows
from deskbroker.store import events
from deskbroker.store import sessions as desktops
from deskbroker.store.tables import Desktop, EnrolmentKey, PendingEnrolment, Tenant

log = logging.getLogger("deskbroker.enrolments")

# A tenant enrolment key and a poll handle are told from the per-desktop secrets (``dbe1.``,
# ``dba1.``) by their prefix.
KEY_PREFIX = "dbk1."
POLL_PREFIX = "dbp1."
# How often a waiting agent is told to ask again.
POLL_INTERVAL_S = 30

EN = EnrolmentState


class Gone(Conflict):
    """The enrolment is over (expired, or its credential collected): enrol again."""

    status = 410
    title = "Gone"


def _gone(detail: str) -> Gone:
    return Gone(detail)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_key(secret: str) -> bool:
    """The secret is a tenant enrolment key (not a per-desktop enrolment secret)."""
    return secret.startswith(KEY_PREFIX)


def _aware(moment: datetime | None) -> datetime | None:
    return aware(moment) if moment is not None else None


@dataclass(frozen=True)
class KeyView:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class MintedKey:
    view: KeyView
    key: str


def _key_view(row: EnrolmentKey) -> KeyView:
    return KeyView(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        created_by=row.created_by,
        created_at=_aware(row.created_at) or row.created_at,
        expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at),
    )


def mint_key(
    ctx: BrokerContext,
    tenant_id: str,
    name: str,
    expires_in_days: int | None,
    who: TokenClaims,
) -> MintedKey:
    """A new enrolment key for ``tenant_id`` (``who``'s own tenant unless ``who`` is a
    global administrator); the key itself is in the answer only. The key remembers
    ``who``'s role: it stands for them when a machine presents it (``_key_refusal``)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    actor = who.username
    may_pick_tenant = who.role == BuiltinRole.GLOBAL_ADMIN.value
    own_tenant = who.tenant_id
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        if tenant_id != own_tenant:
            if not may_pick_tenant:
                raise Forbidden("you can only create objects in your own tenant")
            if session.get(Tenant, tenant_id) is None:
                raise InvalidInput(f"tenant {tenant_id} does not exist", field="tenant_id")
        if rows.key_named(session, tenant_id, name) is not None:
            raise Conflict(f"an enrolment key named {name} exists already; pick another name")
        row = EnrolmentKey(
            tenant_id=tenant_id,
            name=name,
            key_hash=_hash(key),
            prefix=key[: len(KEY_PREFIX) + 6],
            created_by=actor,
            minted_by_role=_standing_role(who),
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        session.add(row)
        session.flush()
        # The key never reaches the event log: only which key, by name and prefix.
        events.append(
            session,
            "agent.enrolment_key",
            tenant_id=tenant_id,
            actor=actor,
            detail={"key_id": row.id, "name": name, "prefix": row.prefix},
        )
        return MintedKey(_key_view(row), key)


def list_keys(ctx: BrokerContext, scope: str | None) -> list[KeyView]:
    with ctx.db.read() as session:
        return [_key_view(r) for r in rows.keys(session, scope)]


def revoke_key(ctx: BrokerContext, key_id: str, scope: str | None, actor: str) -> None:
    """The key enrols nothing more, and the enrolments still waiting under it are denied
    (a revoked key may have leaked). Agents enrolled with it keep their credentials."""
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        row = rows.key(session, key_id)
        if row is None or (scope is not None and row.tenant_id != scope):
            raise NotFound(f"enrolment key {key_id} does not exist")
        # Locked (once known to be the caller's): an enrolment under way (it share-locks
        # the key) is waited for, so what it leaves waiting is denied below rather than
        # outliving the revocation.
        row = rows.key(session, key_id, lock=True)
        if row is None:
            raise NotFound(f"enrolment key {key_id} does not exist")
        if row.revoked_at is not None:
            return
        row.revoked_at = now
        undecided = (EN.PENDING, EN.APPROVED)
        for state in undecided:  # the state machine allows it (raises otherwise)
            transition(ENROLMENT_TRANSITIONS, state, EN.DENIED)
        denied = rows.deny_waiting(
            session,
            key_id,
            states=[s.value for s in undecided],
            to=EN.DENIED.value,
            reason=f"the enrolment key {row.name} was revoked",
            actor=actor,
            now=now,
        )
        events.append(
            session,
            "agent.enrolment_key_revoked",
            tenant_id=row.tenant_id,
            actor=actor,
            detail={"key_id": row.id, "name": row.name, "pending_denied": denied},
        )


@dataclass(frozen=True)
class Waiting:
    """An enrolment held for an administrator: the agent asks again with the handle."""

    pending_id: str
    poll_handle: str
    retry_after_s: int
    detail: str


def enrol_with_key(ctx: BrokerContext, key: str, identity: AgentIdentity) -> Credential | Waiting:
    """An agent's enrolment with a tenant key: its credential when the machine matches
    exactly one desktop of the key's tenant that has no agent yet, else a poll handle."""
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        row = rows.key_by_hash(session, _hash(key))
        expires = _aware(row.expires_at) if row is not None else None
        if row is None or row.revoked_at is not None or (expires is not None and expires < now):
            # One answer for a made-up, revoked or expired key: which it is would tell a
            # guesser that a key existed.
            raise Unauthorized(
                "this enrolment key is not (or no longer) valid: ask the tenant's "
                "administrator for a current one"
            )
        found = rows.matching_desktops(
            session, row.tenant_id, identity.instance_id, [*identity.addresses, identity.public_ip]
        )
        why = _why_waiting(found, identity)
        if not why:
            desktop = desktops.lock_desktop(session, found[0].id)
            if desktop is None or desktop.agent_enrolled_at is not None:
                why = "its desktop changed while it enrolled"
            else:
                why = _key_refusal(ctx, session, row, desktop)
            if desktop is not None and not why:
                return grant(ctx, session, desktop, identity, now, f"key {row.name}")
        if rows.waiting_count(session, row.tenant_id, now) >= ctx.settings.agent_pending_enrol_max:
            raise Conflict(
                f"{ctx.settings.agent_pending_enrol_max} enrolments wait for an administrator "
                "in this tenant already; approve or deny them first"
            )
        handle = POLL_PREFIX + secrets.token_urlsafe(32)
        waiting = PendingEnrolment(
            tenant_id=row.tenant_id,
            key_id=row.id,
            poll_hash=_hash(handle),
            state=EN.PENDING.value,
            identity=identity.detail(),
            reason=why,
            created_at=now,
            expires_at=now + timedelta(seconds=ctx.settings.agent_pending_enrol_ttl_s),
        )
        session.add(waiting)
        session.flush()
        events.append(
            session,
            "agent.enrolment_pending",
            tenant_id=row.tenant_id,
            actor="agent",
            detail={
                "pending_id": waiting.id,
                "key": row.name,
                "identity": identity.detail(),
                "reason": why,
            },
        )
        return Waiting(waiting.id, handle, POLL_INTERVAL_S, _waiting_words(why))


def _why_waiting(found: list[Any], identity: AgentIdentity) -> str:
    """Why the machine is not enrolled at once; empty when it may be."""
    if not found:
        what = f"instance {identity.instance_id}" if identity.instance_id else "its addresses"
        return f"no desktop of the tenant matches {what}"
    if len(found) > 1:
        return "several desktops of the tenant match it"
    if found[0].agent_enrolled_at is not None:
        return f"desktop {found[0].name} has an enrolled agent already"
    return ""


def _standing_role(who: TokenClaims) -> str:
    """The role a key or an approval stands for once its maker is gone: theirs, but a
    global administrator's scoped API token, meant to do less, stands for a tenant
    administrator (the stand-in carries no scopes)."""
    if who.role == BuiltinRole.GLOBAL_ADMIN.value and who.scopes is not None:
        return BuiltinRole.TENANT_ADMIN.value
    return who.role


def _stand_in(tenant_id: str, name: str, role: str) -> TokenClaims:
    """Claims for the stronger-account rule when only a role is known of who acts."""
    return TokenClaims(
        user_id="", tenant_id=tenant_id, role=role, username=name, expires_at=0, token_id=""
    )


def _key_refusal(ctx: BrokerContext, session: Any, row: EnrolmentKey, desktop: Desktop) -> str:
    """Why the key may not enrol ``desktop``'s agent at once; empty when it may.

    Whoever minted the key is not there when a machine presents it, so the key stands
    for them in the role they had then (``minted_by_role``; a key older than that
    column, for a tenant administrator). It enrols at once only the agent of a desktop
    that one
    may mint the token of (``standing.check_reach``, the refusal of ``POST
    /admin/desktops/{id}/agent-token``): a desktop an account stronger than that (a
    global administrator's) holds or is offered waits for an administrator who may reach
    it to approve it. The words name no account: the agent reads them."""
    minter = row.minted_by_role or BuiltinRole.TENANT_ADMIN.value
    write_context.attach_actor(session, ctx, _stand_in(row.tenant_id, f"key {row.name}", minter))
    try:
        standing.check_reach(session, desktop, "desktop", "enrol an agent by key for")
    except Forbidden:
        return (
            f"desktop {desktop.name} is held or offered by an account stronger than the "
            "tenant's administrators: only an administrator who may reach it can approve this"
        )
    return ""


def _waiting_words(why: str) -> str:
    return f"waiting for an administrator's approval: {why}"


def poll(ctx: BrokerContext, handle: str) -> Credential | Waiting:
    """A waiting agent asks again: its credential once approved (given once), the same
    handle while it waits, 403 when denied, 410 when it expired."""
    now = datetime.now(UTC)
    unknown = Unauthorized(
        "this poll handle is not one of this broker's: the agent must enrol again"
    )
    if not handle.startswith(POLL_PREFIX):
        raise unknown
    with ctx.db.write() as session:
        row = rows.pending_by_poll(session, _hash(handle))
        if row is None:
            raise unknown
        state = _lapse(row, now)
        if state is EN.DENIED:
            raise Forbidden(f"an administrator denied this enrolment: {row.reason or 'no reason'}")
        if state is EN.EXPIRED:
            raise _gone("this enrolment waited too long and expired: the agent must enrol again")
        if state is EN.COLLECTED:
            raise _gone("this enrolment's credential was collected already")
        if state is EN.PENDING:
            return Waiting(row.id, handle, POLL_INTERVAL_S, _waiting_words(row.reason))
        desktop = desktops.lock_desktop(session, row.desktop_id or "")
        if desktop is None or desktop.tenant_id != row.tenant_id:
            # (A deleted desktop takes its approvals with it; this is the moment between.)
            raise _gone("the desktop this enrolment was approved for no longer exists")
        refused = _approval_refusal(ctx, session, row, desktop)
        if not refused:
            row.state = transition(ENROLMENT_TRANSITIONS, state, EN.COLLECTED).value
            identity = AgentIdentity(
                str(row.identity.get("instance", "")),
                str(row.identity.get("hostname", "")),
                tuple(str(a) for a in row.identity.get("addresses", [])),
                str(row.identity.get("public_ip", "")),
            )
            return grant(ctx, session, desktop, identity, now, "approval")
        # Denied for good (committed with the unit), then said to the agent.
        row.state = transition(ENROLMENT_TRANSITIONS, state, EN.DENIED).value
        row.reason = refused
    raise Forbidden(f"this enrolment is denied: {refused}")


def _approval_refusal(
    ctx: BrokerContext, session: Any, row: PendingEnrolment, desktop: Desktop
) -> str:
    """Why an approval may no longer be collected; empty when it may. The desktop may
    have come within a stronger account's reach since it was approved (held by it, or
    offered to it by a rule made since): the approver's role (``decided_by_role``; an
    approval older than that column, a tenant administrator's) is checked again, as the
    approval itself was. The words name no account: the agent reads them."""
    approver = row.decided_by_role or BuiltinRole.TENANT_ADMIN.value
    who = _stand_in(row.tenant_id, f"approval of {row.decided_by}", approver)
    write_context.attach_actor(session, ctx, who)
    try:
        standing.check_reach(session, desktop, "desktop", "enrol an agent for")
    except Forbidden:
        return (
            f"desktop {desktop.name} came within the reach of an account stronger than "
            "whoever approved this since; an administrator who may reach it must approve "
            "the agent again"
        )
    return ""


def _lapse(row: PendingEnrolment, now: datetime) -> EnrolmentState:
    """The row's state, moved to ``expired`` when its time ran out undecided/uncollected."""
    state = EN(row.state)
    expires = _aware(row.expires_at) or now
    if state in (EN.PENDING, EN.APPROVED) and expires <= now:
        state = transition(ENROLMENT_TRANSITIONS, state, EN.EXPIRED)
        row.state = state.value
    return state


@dataclass(frozen=True)
class PendingView:
    id: str
    tenant_id: str
    key_id: str
    state: str
    identity: dict[str, Any]
    desktop_id: str | None
    reason: str
    decided_by: str
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime


def _view(row: PendingEnrolment, now: datetime) -> PendingView:
    expires = _aware(row.expires_at) or now
    state = row.state
    if state in (EN.PENDING, EN.APPROVED) and expires <= now:
        state = EN.EXPIRED.value  # shown as it will be stored at the next touch
    return PendingView(
        id=row.id,
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        state=state,
        identity=dict(row.identity),
        desktop_id=row.desktop_id,
        reason=row.reason,
        decided_by=row.decided_by,
        created_at=_aware(row.created_at) or now,
        decided_at=_aware(row.decided_at),
        expires_at=expires,
    )


def list_pending(
    ctx: BrokerContext, scope: str | None, state: EnrolmentState | None, limit: int, offset: int
) -> tuple[list[PendingView], int]:
    now = datetime.now(UTC)
    with ctx.db.read() as session:
        found, total = rows.pendings(
            session, scope, state.value if state is not None else None, limit, offset
        )
        return [_view(r, now) for r in found], total


def _decidable(session: Any, pending_id: str, scope: str | None, now: datetime) -> PendingEnrolment:
    row = rows.pending(session, pending_id)
    if row is None or (scope is not None and row.tenant_id != scope):
        raise NotFound(f"pending enrolment {pending_id} does not exist")
    state = _lapse(row, now)
    if state is not EN.PENDING:
        raise Conflict(f"pending enrolment {pending_id} is {state.value}: it is decided already")
    return row


def approve(
    ctx: BrokerContext, pending_id: str, desktop_id: str, scope: str | None, who: TokenClaims
) -> PendingView:
    """The waiting agent is the agent of ``desktop_id`` (of the enrolment's own tenant);
    it gets the desktop's credential at its next poll, which ends the desktop's current
    agent's. So it is refused (403), as minting that agent's token is, for a desktop an
    account stronger than ``who`` holds or is offered (``standing.check_reach``)."""
    actor = who.username
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        row = _decidable(session, pending_id, scope, now)
        desktop = desktops.desktop(session, desktop_id)
        if desktop is None or desktop.tenant_id != row.tenant_id:
            if desktop is not None and scope is None:
                raise InvalidInput(
                    f"desktop {desktop_id} belongs to another tenant than the enrolment; "
                    "an agent can only be approved for its key's tenant",
                    field="desktop_id",
                )
            raise InvalidInput(f"desktop {desktop_id} does not exist", field="desktop_id")
        write_context.attach_actor(session, ctx, who)
        standing.check_reach(session, desktop, "desktop", "approve an agent enrolment for")
        row.state = transition(ENROLMENT_TRANSITIONS, EN.PENDING, EN.APPROVED).value
        row.desktop_id = desktop.id
        row.decided_by, row.decided_at = actor, now
        row.decided_by_role = _standing_role(who)
        events.append(
            session,
            "agent.enrolment_approved",
            tenant_id=row.tenant_id,
            actor=actor,
            desktop_id=desktop.id,
            detail={"pending_id": row.id, "identity": dict(row.identity)},
        )
        return _view(row, now)


def deny(
    ctx: BrokerContext, pending_id: str, reason: str, scope: str | None, actor: str
) -> PendingView:
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        row = _decidable(session, pending_id, scope, now)
        row.state = transition(ENROLMENT_TRANSITIONS, EN.PENDING, EN.DENIED).value
        row.reason = reason or "denied by an administrator"
        row.decided_by, row.decided_at = actor, now
        events.append(
            session,
            "agent.enrolment_denied",
            tenant_id=row.tenant_id,
            actor=actor,
            detail={"pending_id": row.id, "reason": row.reason},
        )
        return _view(row, now)
