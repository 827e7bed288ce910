"""Desktop agents: enrolment without hands, credentials, heartbeats and pulled actions.

An agent proves itself once with an enrolment secret (the engine puts a single-use,
short-lived one into the metadata of every desktop it builds) and receives two things:
a short-lived agent token that speaks only for its desktop, and a refresh secret that
only the machine's root can read. Heartbeats keep the token fresh; a token revoked when
the desktop changes hands (or expired while the machine was off) is replaced by
presenting the refresh secret, which is itself replaced on every use, so a copy taken
by a past holder stops working at the agent's next refresh. After a release that secret
buys one token only while the agent's last word is recent (the live agent's next beat),
and an administrator's new token voids it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from deskbroker.domain.states import AGENT_TRANSITIONS, AgentState, transition
from deskbroker.domain.timestamps import aware
from deskbroker.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from deskbroker.security import TokenClaims
from deskbroker.services.context import BrokerContext
from deskbroker.services.sessions import check_agent, check_agent_token
from deskbroker.store import events
from deskbroker.store import sessions as rows
from deskbroker.store.db import Unit as Session
from deskbroker.store.tables import AgentAction, Desktop

log = logging.getLogger("deskbroker.agents")

ACTION_KINDS = ("logoff", "lock", "message")
# The instance metadata key of an engine-built desktop's enrolment secret (the agent's
# identity module reads the same key).
ENROL_KEY = "deskbroker_enrol"


@dataclass(frozen=True)
class AgentIdentity:
    """What an agent says of its machine (from the metadata service or the host)."""

    instance_id: str = ""
    hostname: str = ""
    addresses: tuple[str, ...] = ()
    public_ip: str = ""

    def detail(self) -> dict[str, object]:
        return {
            "instance": self.instance_id,
            "hostname": self.hostname,
            "addresses": list(self.addresses),
            "public_ip": self.public_ip,
        }


@dataclass(frozen=True)
class Credential:
    desktop_id: str
    desktop_name: str
    token: str
    expires_at: int
    refresh_secret: str


@dataclass(frozen=True)
class ActionOrder:
    id: str
    kind: str
    session_key: str
    message: str


@dataclass(frozen=True)
class Beat:
    """A heartbeat's answer."""

    desktop_id: str
    assigned_user: str | None
    actions: tuple[ActionOrder, ...]
    heartbeat_s: int
    token: str | None = None
    expires_at: int | None = None


@dataclass(frozen=True)
class ActionResult:
    id: str
    ok: bool
    detail: str = ""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _mint(ctx: BrokerContext, session: Session, desktop: Desktop) -> tuple[str, int, str]:
    """A new agent token and refresh secret for the desktop; the old ones stop working."""
    token, expires, token_id = ctx.signer.issue_agent(
        desktop_id=desktop.id,
        tenant_id=desktop.tenant_id,
        desktop_name=desktop.name,
        ttl_s=ctx.settings.agent_token_ttl_s,
    )
    refresh = secrets.token_urlsafe(32)
    desktop.agent_token_id = token_id
    desktop.agent_refresh_hash = _hash(refresh)
    return token, expires, refresh


def _seen(desktop: Desktop, now: datetime) -> None:
    desktop.agent_seen_at = now
    desktop.agent_state = transition(
        AGENT_TRANSITIONS, AgentState(desktop.agent_state), AgentState.RUNNING
    ).value


def enrolment_secret(ctx: BrokerContext, desktop_id: str, tenant_id: str) -> str:
    """The single-use enrolment secret the engine puts into a build's metadata."""
    expires = int(time.time()) + ctx.settings.agent_enrol_ttl_s
    return ctx.signer.enrolment_secret(
        desktop_id=desktop_id, tenant_id=tenant_id, expires_at=expires
    )


@dataclass(frozen=True)
class IssuedSecret:
    desktop_id: str
    desktop_name: str
    secret: str
    expires_at: int


def issue_enrolment_secret(
    ctx: BrokerContext, desktop_id: str, tenant_scope: str | None, actor: str
) -> IssuedSecret:
    """An administrator's enrolment secret for a machine the broker did not build (or one
    whose agent must enrol again): single use, valid ``agent_enrol_ttl_s``. The desktop's
    current agent keeps working until the new one enrols; a secret issued before that
    enrolment (this one, or an earlier one) is void from then on."""
    with ctx.db.write() as session:
        desktop = rows.desktop(session, desktop_id)
        if desktop is None or (tenant_scope is not None and desktop.tenant_id != tenant_scope):
            raise NotFound(f"desktop {desktop_id} does not exist")
        # Issued at least a second after the last enrolment, so that the issue time the
        # secret carries (its expiry less the TTL) tells it from the secrets used before.
        issued = int(time.time())
        if desktop.agent_enrolled_at is not None:
            issued = max(issued, _second(desktop.agent_enrolled_at) + 1)
        expires = issued + ctx.settings.agent_enrol_ttl_s
        secret = ctx.signer.enrolment_secret(
            desktop_id=desktop.id, tenant_id=desktop.tenant_id, expires_at=expires, by_admin=True
        )
        events.append(
            session,
            "agent.enrolment_secret",
            tenant_id=desktop.tenant_id,
            actor=actor,
            desktop_id=desktop.id,
            detail={"expires_at": expires},
        )
        return IssuedSecret(desktop.id, desktop.name, secret, expires)


def _second(moment: datetime) -> int:
    return int(aware(moment).timestamp())


def _used(ctx: BrokerContext, desktop: Desktop, expires: int) -> bool:
    """The secret was issued before the desktop's agent last enrolled: it was used, or
    an enrolment after it (with a newer secret) voided it. Each secret works once, and
    minting a new one never brings an old one back."""
    if desktop.agent_enrolled_at is None:
        return False
    return expires - ctx.settings.agent_enrol_ttl_s <= _second(desktop.agent_enrolled_at)


def _check_instance(desktop: Desktop, identity: AgentIdentity) -> None:
    """The engine's secret is for the instance it built: a machine presenting it must be
    that instance. The real agent always reports the instance id it reads from the
    metadata service, where it found the secret; saying none does not skip the check."""
    if not desktop.external_id or identity.instance_id == desktop.external_id:
        return
    said = (
        f"instance {identity.instance_id}"
        if identity.instance_id
        else "a machine that names no instance (identity.instance)"
    )
    raise Forbidden(f"this enrolment secret is desktop {desktop.name}'s, and this is {said}")


def enrol(ctx: BrokerContext, secret: str, identity: AgentIdentity) -> Credential:
    """Exchange an enrolment secret for the desktop's credential.

    Refused (401) when the secret is not one this cluster signed for the desktop it
    names, has expired, or was used already; refused (403) when the machine presenting
    it is another instance than the desktop the secret was made for.
    """
    named = ctx.signer.read_enrolment(secret)
    if named is None:
        raise Unauthorized(
            "this is not an enrolment secret of this broker: a desktop the broker built "
            "finds its secret in the instance metadata (key deskbroker_enrol); for another "
            "machine an administrator mints one (POST /api/v1/admin/desktops/{id}/"
            "enrolment-secret)"
        )
    desktop_id, expires, by_admin = named
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        desktop = rows.lock_desktop(session, desktop_id)
        if desktop is None or not ctx.signer.enrolment_valid(secret, desktop.tenant_id):
            raise Unauthorized("this enrolment secret was not issued by this broker")
        if expires < now.timestamp():
            ago = int(now.timestamp() - expires)
            raise Unauthorized(
                f"this enrolment secret expired {ago} s ago; rebuild the desktop, or have an "
                "administrator mint an agent token for it"
            )
        if _used(ctx, desktop, expires):
            enrolled = aware(desktop.agent_enrolled_at or now).isoformat()
            raise Unauthorized(
                f"this enrolment secret was used already or replaced (desktop {desktop.name}'s "
                f"agent enrolled at {enrolled}, after it was issued); an enrolment secret is "
                "single-use: an administrator mints a new one"
            )
        # A machine the broker did not build has no instance id of the broker's to
        # compare with: an administrator's secret skips the check.
        if not by_admin:
            _check_instance(desktop, identity)
        # Never before the secret's issue second (an administrator's may be issued a
        # second ahead, see issue_enrolment_secret): the enrolment must void it.
        issued = datetime.fromtimestamp(expires - ctx.settings.agent_enrol_ttl_s, UTC)
        how = "engine" if not by_admin else "admin"
        return grant(ctx, session, desktop, identity, max(now, issued), how)


def grant(
    ctx: BrokerContext,
    session: Session,
    desktop: Desktop,
    identity: AgentIdentity,
    now: datetime,
    how: str,
) -> Credential:
    """The desktop's agent is enrolled: a new token and refresh secret (the previous
    agent's stop working), its sequence restarted, and one ``agent.enrolled`` event that
    says ``how`` (engine, admin, key, approval). ``desktop`` is locked by the caller."""
    token, token_expires, refresh = _mint(ctx, session, desktop)
    desktop.agent_enrolled_at = now
    desktop.agent_seq = 0
    _seen(desktop, now)
    events.append(
        session,
        "agent.enrolled",
        tenant_id=desktop.tenant_id,
        actor=f"agent@{desktop.name}",
        desktop_id=desktop.id,
        detail={"identity": identity.detail(), "expires_at": token_expires, "how": how},
    )
    return Credential(desktop.id, desktop.name, token, token_expires, refresh)


def _check_handover(ctx: BrokerContext, desktop: Desktop, now: datetime) -> None:
    """A refresh after a release (the token was revoked, none minted since): the live
    agent asks at its next beat, so its last word is recent. A secret presented later
    (by a past holder who copied it, or an agent silent through the handover) is refused:
    the desktop's agent enrols again."""
    seen = aware(desktop.agent_seen_at) if desktop.agent_seen_at is not None else None
    if seen is not None and (now - seen).total_seconds() <= ctx.settings.agent_lost_after_s:
        return
    raise Unauthorized(
        f"desktop {desktop.name} changed hands while its agent was silent (for more than "
        f"{ctx.settings.agent_lost_after_s} s): the refresh secret of the past holding no "
        "longer buys a token; an administrator mints an enrolment secret "
        "(POST /api/v1/admin/desktops/{id}/enrolment-secret) and the agent enrols again"
    )


def refresh(ctx: BrokerContext, desktop_id: str, refresh_secret: str) -> Credential:
    """A new token (and a new refresh secret) for an enrolled agent. After a release the
    secret of the past holding buys one only at the live agent's next beat
    (``_check_handover``)."""
    now = datetime.now(UTC)
    refused = Unauthorized(
        "this refresh secret is not (or no longer) the desktop's: the agent must enrol again"
    )
    with ctx.db.write() as session:
        # Checked before the row is locked, and again once it is (a release may have
        # cleared it meanwhile): anyone may call this route, and a wrong secret must not
        # hold a desktop's row, which its claims and agent events wait for.
        if not _secret_matches(rows.refresh_hash(session, desktop_id), refresh_secret):
            raise refused
        desktop = rows.lock_desktop(session, desktop_id)
        if desktop is None or not _secret_matches(desktop.agent_refresh_hash, refresh_secret):
            raise refused
        handover = desktop.agent_token_id is None
        if handover:
            _check_handover(ctx, desktop, now)
        token, expires, fresh = _mint(ctx, session, desktop)
        _seen(desktop, now)
        events.append(
            session,
            "agent.token",
            tenant_id=desktop.tenant_id,
            actor=f"agent@{desktop.name}",
            desktop_id=desktop.id,
            detail={"expires_at": expires, "reason": "refresh"}
            | ({"after_release": True} if handover else {}),
        )
        return Credential(desktop.id, desktop.name, token, expires, fresh)


def _secret_matches(stored: str | None, refresh_secret: str) -> bool:
    return stored is not None and hmac.compare_digest(stored, _hash(refresh_secret))


def heartbeat(
    ctx: BrokerContext,
    who: TokenClaims,
    identity: AgentIdentity,
    done: Sequence[ActionResult],
    queued: int = 0,
) -> Beat:
    """Record that the agent lives, take its action results, hand it its next actions.

    A token past half its life is replaced in the answer, so an agent that beats never
    sees it expire; one that stops beating (machine off for weeks) refreshes on return.
    """
    desktop_id = check_agent(ctx, who, None)
    now = datetime.now(UTC)
    with ctx.db.write() as session:
        desktop = rows.lock_desktop(session, desktop_id)
        if desktop is None:
            raise NotFound(f"desktop {desktop_id} does not exist")
        # Again under the row's lock: a release (or a newer token) that landed since the
        # check above must not be undone by the replacement token minted below.
        check_agent_token(who, (desktop.tenant_id, desktop.agent_token_id))
        was_lost = desktop.agent_state == AgentState.LOST.value
        _seen(desktop, now)
        if was_lost:
            events.append(
                session,
                "agent.back",
                tenant_id=desktop.tenant_id,
                actor=f"agent@{desktop.name}",
                desktop_id=desktop.id,
                detail={"identity": identity.detail(), "queued": queued},
            )
        for result in done:
            action = rows.action(session, desktop.id, result.id)
            if action is None or action.done_at is not None:
                continue  # another desktop's id, or answered before: nothing to do
            action.done_at, action.ok, action.detail = now, result.ok, result.detail[:2000]
            events.append(
                session,
                f"agent.{action.kind}",
                tenant_id=desktop.tenant_id,
                actor=f"agent@{desktop.name}",
                desktop_id=desktop.id,
                detail={
                    "action_id": action.id,
                    "session_id": action.session_id,
                    "ok": result.ok,
                    "detail": result.detail[:500],
                    "message": action.message,
                },
            )
        orders = []
        for action in rows.open_actions(session, desktop.id):
            if action.delivered_at is None:
                action.delivered_at = now
            orders.append(ActionOrder(action.id, action.kind, action.session_key, action.message))
        holder = (
            rows.user_named(session, desktop.assigned_user_id) if desktop.assigned_user_id else None
        )
        token: str | None = None
        expires: int | None = None
        if who.expires_at - time.time() < ctx.settings.agent_token_ttl_s / 2:
            token, expires, token_id = ctx.signer.issue_agent(
                desktop_id=desktop.id,
                tenant_id=desktop.tenant_id,
                desktop_name=desktop.name,
                ttl_s=ctx.settings.agent_token_ttl_s,
            )
            desktop.agent_token_id = token_id
        return Beat(
            desktop_id=desktop.id,
            assigned_user=holder.username if holder is not None else None,
            actions=tuple(orders),
            heartbeat_s=ctx.settings.agent_heartbeat_s,
            token=token,
            expires_at=expires,
        )


def queue_action(
    session: Session,
    desktop: Desktop,
    kind: str,
    *,
    session_id: str | None,
    session_key: str,
    message: str = "",
    actor: str,
) -> AgentAction:
    """Ask the desktop's agent to do something; it pulls the order with its next beat."""
    if kind not in ACTION_KINDS:
        raise InvalidInput(f"an agent action is one of {', '.join(ACTION_KINDS)}", field="kind")
    action = AgentAction(
        tenant_id=desktop.tenant_id,
        desktop_id=desktop.id,
        session_id=session_id,
        session_key=session_key,
        kind=kind,
        message=message,
        actor=actor,
    )
    rows.add(session, [action])
    return action


@dataclass
class LostSweep:
    marked: list[str] = field(default_factory=list)


def mark_lost(ctx: BrokerContext, now: datetime) -> LostSweep:
    """Agents silent longer than ``agent_lost_after_s`` become ``lost`` (one event each)."""
    cutoff = now - timedelta(seconds=ctx.settings.agent_lost_after_s)
    sweep = LostSweep()
    with ctx.db.write() as session:
        for desktop in rows.silent_agents(session, cutoff):
            desktop.agent_state = transition(
                AGENT_TRANSITIONS, AgentState(desktop.agent_state), AgentState.LOST
            ).value
            seen = desktop.agent_seen_at
            events.append(
                session,
                "agent.lost",
                tenant_id=desktop.tenant_id,
                actor="engine",
                desktop_id=desktop.id,
                detail={"last_seen_at": seen.isoformat() if seen else None},
            )
            sweep.marked.append(desktop.id)
    return sweep
