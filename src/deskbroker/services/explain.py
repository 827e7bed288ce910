"""Explain: what a user would get from a client address at a moment, and which rule decided.

The answer follows the login path step by step (source choice, the identity as the source
describes it, the rules in order, the policy, what each pool could hand out) without a
password and without claiming, queueing or writing anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, tzinfo
from functools import partial

from deskbroker.domain import rules as rule_model
from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import AssignmentRule, Identity, RuleVerdict, client_ip, zone
from deskbroker.errors import DirectoryUnavailable, InvalidInput, NotFound
from deskbroker.identity.base import source_kinds
from deskbroker.services.config_cache import ConfigView, PolicyView, SourceView
from deskbroker.services.context import BrokerContext
from deskbroker.services.source_choice import choose
from deskbroker.store import claims, queue_rows

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_moment(text: str | None, timezone: str, now: datetime | None = None) -> datetime:
    """``None`` (now), ``HH:MM`` (today in ``timezone``) or an ISO date and time (read in
    ``timezone`` when it carries no offset) → an aware datetime."""
    try:
        where: tzinfo = zone(timezone)
    except ValueError as exc:
        raise InvalidInput(f"timezone: {exc}") from exc
    now = (now or datetime.now(UTC)).astimezone(where)
    if text is None or not text.strip():
        return now
    text = text.strip()
    clock = _CLOCK.match(text)
    if clock:
        return datetime.combine(now.date(), time(int(clock[1]), int(clock[2])), tzinfo=where)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(
            f"at: {text!r} is not a moment; give HH:MM (today, e.g. 08:00) or an ISO date "
            "and time such as 2026-11-28T08:00 or 2026-11-28T08:00:00+01:00"
        ) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=where)


def parse_client(text: str | None) -> str | None:
    """The client address as the rules will see it; words for anything else."""
    if text is None or not text.strip():
        return None
    try:
        return str(client_ip(text))
    except ValueError as exc:
        raise InvalidInput(
            f"client_address: {text!r} is not an IP address such as 10.1.2.3 or 2001:db8::1"
        ) from exc


@dataclass(frozen=True)
class SourceStep:
    """One identity source the login would try, and what it said about the user."""

    source: SourceView
    why: str
    outcome: str  # knows | unknown | unreachable
    detail: str


@dataclass(frozen=True)
class PoolOffer:
    """What one policy entry would hand out now."""

    pool_id: str
    pool_name: str
    desktops: int
    assignment: str
    ordering: str
    free: int
    backup_pool_id: str | None
    backup_pool_name: str | None
    backup_free: int | None
    holds: tuple[str, ...]
    outcome: str


@dataclass
class Explanation:
    username: str
    tenant_id: str
    tenant_name: str
    at: datetime
    client_address: str | None
    source: SourceView
    source_why: str
    tried: list[SourceStep]
    identity: Identity
    user: UserRecord | None
    verdicts: list[RuleVerdict]
    deciding: AssignmentRule | None
    policy: PolicyView | None
    role: str
    refused: str | None = None
    offers: list[PoolOffer] = field(default_factory=list)
    policy_names: dict[str, str] = field(default_factory=dict)
    summary: str = ""


class ExplainService:
    """Answers "what would user X from A at T get" on the configured database."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def explain(
        self,
        username: str,
        *,
        tenant_id: str,
        source: str | None = None,
        client_address: str | None = None,
        at: datetime | None = None,
    ) -> Explanation:
        username = username.strip()
        if not username:
            raise InvalidInput("username: give the name a user logs in with")
        moment = at or datetime.now(UTC)
        # An admin asks about what was configured a moment ago: no cached view.
        view = self.ctx.cache.current(self.ctx.db, fresh=True)
        tenant_name = next((n for n, i in view.tenants_by_name.items() if i == tenant_id), "")
        found = self._identify(view, tenant_id, tenant_name, username, source)
        step, who, record = found.step, found.identity, found.record
        verdicts, deciding = rule_model.explain(step.source.rules, who, client_address, moment)
        policy = view.policies.get(deciding.policy_id or "") if deciding is not None else None
        # As the login path: a role set on the user beats the rule's.
        base = record.role if record is not None else "user"
        role = base if base != "user" or deciding is None else deciding.role
        result = Explanation(
            username=username,
            tenant_id=tenant_id,
            tenant_name=tenant_name,
            at=moment,
            client_address=client_address,
            source=step.source,
            source_why=step.why,
            tried=found.tried,
            identity=who,
            user=record,
            verdicts=verdicts,
            deciding=deciding,
            policy=policy,
            role=role,
            policy_names={p.id: p.name for p in view.policies.values()},
        )
        if record is not None and record.disabled:
            result.refused = "the account is disabled in the broker: the login would be refused"
        else:
            result.offers = self._offers(view, record, policy)
        result.summary = _summary(result)
        return result

    # --- which source takes the user -----------------------------------------------------
    def _identify(
        self, view: ConfigView, tenant_id: str, tenant_name: str, username: str, source: str | None
    ) -> _Found:
        tried: list[SourceStep] = []
        unreachable: DirectoryUnavailable | None = None
        with self.ctx.db.read() as session:
            # The login's own choice: a known name goes to its own source only.
            choice = choose(session, view, tenant_id, username, source)
        if source is not None and not choice.candidates:
            raise NotFound(f"tenant {tenant_name} has no enabled identity source named {source!r}")
        if not choice.candidates and choice.owners:
            raise NotFound(
                f"{username!r} belongs to a disabled identity source of tenant {tenant_name}: "
                "a login would be refused without asking any other source"
            )
        for candidate in choice.candidates:
            src = candidate.source
            record = choice.record(src.id, candidate.name)
            secrets: dict[str, str] = {}
            if src.secrets_sealed:
                secrets = json.loads(self.ctx.secrets.open(src.secrets_sealed))
            driver = source_kinds()[src.kind](src.params, secrets, self.ctx.hashing)
            try:
                who = self.ctx.sources.run(
                    src, driver, partial(driver.lookup, candidate.name, record)
                )
            except DirectoryUnavailable as exc:
                # The login path moves on to the next source too.
                unreachable = unreachable or DirectoryUnavailable(
                    f"identity source {src.name} cannot be reached, so {username!r} cannot be "
                    f"described: {exc.detail}",
                    reason=exc.extra.get("reason", "unreachable"),
                )
                tried.append(SourceStep(src, candidate.why, "unreachable", exc.detail))
                continue
            finally:
                driver.close()
            if who is None:
                tried.append(SourceStep(src, candidate.why, "unknown", "does not know the user"))
                continue
            if driver.provisions_users and who.username != candidate.name:
                record = choice.record(src.id, who.username)
                if record is None and who.username.lower() != candidate.name.lower():
                    with self.ctx.db.read() as session:
                        record = claims.find_user(session, src.id, who.username)
            step = SourceStep(
                src,
                candidate.why,
                "knows",
                "knows the user"
                + ("" if record is not None else "; a first login would create the broker user"),
            )
            tried.append(step)
            return _Found(step, who, record, tried)
        if unreachable is not None:
            raise unreachable
        names = ", ".join(s.source.name for s in tried) or "none is enabled"
        raise NotFound(
            f"no identity source of tenant {tenant_name} knows {username!r} (tried: {names})"
        )

    # --- what the policy would hand out ------------------------------------------------
    def _offers(
        self, view: ConfigView, record: UserRecord | None, policy: PolicyView | None
    ) -> list[PoolOffer]:
        if policy is None:
            return []
        pool_ids = {e.pool_id for e in policy.entries} | {
            e.backup_pool_id for e in policy.entries if e.backup_pool_id
        }
        with self.ctx.db.read() as session:
            free = claims.free_desktops(session, pool_ids)
            held = claims.held_desktops(session, record.id) if record is not None else []
            waiting = dict(queue_rows.queue_positions(session, record.id)) if record else {}
            queues = {p: queue_rows.count_queue(session, p) for p in pool_ids}
        budget, total = policy.max_desktops_per_user, len(held)
        offers: list[PoolOffer] = []
        # The same walk as the login's claims, on counts instead of rows.
        for entry in policy.entries:
            pools = {entry.pool_id, entry.backup_pool_id}
            mine = tuple(d.name for d in held if d.pool_id in pools)
            need = max(0, min(entry.desktops - len(mine), budget - total))
            from_pool = min(need, free.get(entry.pool_id, 0))
            backup = entry.backup_pool_id
            from_backup = min(need - from_pool, free.get(backup, 0)) if backup else 0
            free[entry.pool_id] = free.get(entry.pool_id, 0) - from_pool
            if backup:
                free[backup] = free.get(backup, 0) - from_backup
            total += from_pool + from_backup
            words: list[str] = []
            if mine:
                words.append(f"keeps {', '.join(mine)}")
            if from_pool:
                words.append(f"would get {from_pool} free desktop{'s' * (from_pool > 1)}")
            if from_backup:
                name = view.pools[backup].name if backup in view.pools else backup
                words.append(f"would get {from_backup} from the backup pool {name}")
            if need > from_pool + from_backup:
                position = waiting.get(entry.pool_id) or queues.get(entry.pool_id, 0) + 1
                words.append(f"would wait in the queue at position {position}")
            if not words:
                words.append(
                    "nothing more: the policy's limit of "
                    f"{budget} desktop{'s' * (budget != 1)} per user is reached"
                )
            offers.append(
                PoolOffer(
                    pool_id=entry.pool_id,
                    pool_name=entry.pool_name,
                    desktops=entry.desktops,
                    assignment=entry.assignment.value,
                    ordering=entry.ordering.value,
                    free=free.get(entry.pool_id, 0) + from_pool,
                    backup_pool_id=backup,
                    backup_pool_name=view.pools[backup].name if backup in view.pools else None,
                    backup_free=(free.get(backup, 0) + from_backup) if backup else None,
                    holds=mine,
                    outcome="; ".join(words),
                )
            )
        return offers


@dataclass(frozen=True)
class _Found:
    step: SourceStep
    identity: Identity
    record: UserRecord | None
    tried: list[SourceStep]


def rule_label(rule: AssignmentRule) -> str:
    return repr(rule.name) if rule.name else rule.rule_id


def _summary(result: Explanation) -> str:
    at = f"{result.at:%Y-%m-%d %H:%M} {result.at.tzname() or ''}".strip()
    where = f" from {result.client_address}" if result.client_address else ""
    head = f"{result.identity.username} (source {result.source.name}){where} at {at}: "
    if result.deciding is None:
        head += "no rule matches, so no policy"
    else:
        policy = f"policy {result.policy.name}" if result.policy else "no policy"
        head += f"rule {rule_label(result.deciding)} decides: {policy}"
    head += f", role {result.role}"
    if result.refused:
        return f"{head}; {result.refused}"
    if result.offers:
        head += "; " + "; ".join(f"{o.pool_name}: {o.outcome}" for o in result.offers)
    return head
