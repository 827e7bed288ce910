"""Webhook setters and API token holders looked up in their directory again.

The fan-out vets each webhook's setter on their user row (``services/webhooks.py``), and
a directory user's role may come from an assignment rule over their groups, which the
row holds as the directory gave them at the user's last sign-in. An administrator
removed from the admin group, or deleted from the directory, who never signs in again
would keep their webhooks receiving the tenant's events for ever; one given an
administrator's role on their account and then deleted from the directory would keep
their API tokens (which act with that stored role) until they expire. So the engine's
``webhook_setters`` job (one for the cluster, every ``webhook_setter_check_s``) asks each
such setter's directory about them (``lookup``), with no transaction open and within
the source's bulkhead (``ctx.sources``), then writes the answer in a unit of its own
that re-reads the row:

- the directory knows the user: their row is refreshed as a sign-in refreshes it
  (``store.claims.upsert_directory_user``: groups, attributes, display name, e-mail,
  within the row's bounds as at a sign-in, ``services.directory_bounds``),
  and the next fan-out vets them on what the directory says now;
- the directory does not know the user: their webhooks are switched off, each with a
  ``webhook.disabled`` event, and their live API tokens revoked, each with an
  ``admin.delete`` event of ``api-tokens`` saying why; the row itself is left as it is;
- the directory does not answer, or fails: nothing changes, a warning is logged, and
  the next run asks again. An outage never switches a webhook off.

Only sources whose ``lookup`` asks the directory are asked (``answers_lookups``): a
local user's row is the truth itself, and an OpenID provider is asked about a user only
at their sign-in. At most ``MAX_PER_RUN`` setters are looked up per run, each source's
least recently refreshed first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from functools import partial

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import DeskbrokerError, DirectoryUnavailable
from deskbroker.identity.base import IdentitySourceDriver, answers_lookups, source_kinds
from deskbroker.services import webhooks as vetting
from deskbroker.services.config_cache import SourceView
from deskbroker.services.context import BrokerContext
from deskbroker.services.directory_bounds import within_bounds
from deskbroker.store import claims, events
from deskbroker.store import webhook_setters as rows
from deskbroker.store import webhooks as webhook_rows
from deskbroker.store.tables import utcnow

log = logging.getLogger("deskbroker.webhooks")

# Lookups per run, all sources together: a few seconds of a healthy directory's time.
MAX_PER_RUN = 200


@dataclass
class Recheck:
    """What one run did."""

    looked_up: int = 0
    changed: int = 0  # known, and their row said something else
    gone: int = 0  # unknown to their directory
    switched_off: int = 0  # webhooks, of those gone
    revoked: int = 0  # API tokens, of those gone
    unanswered: int = 0  # not looked up, or no answer: asked again next run

    def summary(self) -> str:
        """The run in words, for the job's log line."""
        return (
            f"{self.looked_up} webhook setters and API token holders looked up: "
            f"{self.changed} changed, {self.gone} gone ({self.switched_off} webhooks "
            f"switched off, {self.revoked} API tokens revoked), "
            f"{self.unanswered} left for the next run"
        )


def checked_sources(ctx: BrokerContext) -> dict[str, SourceView]:
    """The enabled identity sources whose ``lookup`` asks their directory, by id."""
    view = ctx.cache.current(ctx.db)
    kinds = source_kinds()
    return {
        source.id: source
        for sources in view.sources_by_tenant.values()
        for source in sources
        if (kind := kinds.get(source.kind)) is not None and answers_lookups(kind)
    }


def recheck_setters(ctx: BrokerContext, limit: int = MAX_PER_RUN) -> Recheck:
    """Look the directory users who set up enabled webhooks up in their directory again,
    at most ``limit`` of them, and write what each directory says (see the module)."""
    report = Recheck()
    sources = checked_sources(ctx)
    if not sources:
        return report
    with ctx.db.read() as session:
        setters = rows.directory_setters(session, sources.keys(), limit, utcnow())
    drivers: dict[str, IdentitySourceDriver] = {}
    silent: set[str] = set()  # sources that did not answer: not asked again this run
    try:
        for user in setters:
            source = sources[user.identity_source_id]
            if source.id in silent:
                report.unanswered += 1
                continue
            if source.id not in drivers:
                try:
                    drivers[source.id] = _driver(ctx, source)
                except Exception as exc:  # one source's fault keeps no other from its turn
                    log.warning(
                        "identity source %s could not be opened to look webhook setters up "
                        "again (%s): asked again at the next run",
                        source.name,
                        type(exc).__name__,
                    )
                    silent.add(source.id)
                    report.unanswered += 1
                    continue
            answered, identity = _look_up(ctx, source, drivers[source.id], user, silent)
            if not answered:
                report.unanswered += 1
                continue
            report.looked_up += 1
            if identity is None:
                off, revoked = _gone(ctx, source, user)
                report.gone += 1
                report.switched_off += off
                report.revoked += revoked
            elif _refresh(ctx, source, user, identity):
                report.changed += 1
    finally:
        for driver in drivers.values():
            driver.close()
    return report


def _driver(ctx: BrokerContext, source: SourceView) -> IdentitySourceDriver:
    # Its own for the run, let go at its end, as explain does: the login path's drivers
    # belong to the request threads.
    secrets: dict[str, str] = {}
    if source.secrets_sealed:
        secrets = json.loads(ctx.secrets.open(source.secrets_sealed))
    return source_kinds()[source.kind](source.params, secrets, ctx.hashing)


def _look_up(
    ctx: BrokerContext,
    source: SourceView,
    driver: IdentitySourceDriver,
    user: UserRecord,
    silent: set[str],
) -> tuple[bool, Identity | None]:
    """Whether the directory answered about ``user``, and its answer (None: it does not
    know them); a source that did not answer joins ``silent``. The warnings say what
    failed, never a secret: the directory's errors are the broker's own words, anything
    else is named by its type alone."""
    try:
        return True, ctx.sources.run(source, driver, partial(driver.lookup, user.username, user))
    except DirectoryUnavailable as exc:
        silent.add(source.id)
        log.warning(
            "webhook setters of identity source %s were not looked up again (%s): nothing "
            "changes until it answers, at a later run",
            source.name,
            exc.detail,
        )
    except DeskbrokerError as exc:
        log.warning(
            "looking webhook setter %s up again at identity source %s failed (%s): "
            "nothing changes, asked again at the next run",
            user.username,
            source.name,
            exc.detail,
        )
    except Exception as exc:
        log.warning(
            "looking webhook setter %s up again at identity source %s failed (%s): "
            "nothing changes, asked again at the next run",
            user.username,
            source.name,
            type(exc).__name__,
        )
    return False, None


def _refresh(ctx: BrokerContext, source: SourceView, user: UserRecord, who: Identity) -> bool:
    """Write what the directory says of ``user`` as a sign-in would; whether it changed
    something. Written even when nothing changed: the row's ``updated_at`` then says when
    it was last refreshed, which puts it last in line for the next run."""
    # The entry found under the stored name is this user's, whatever spelling the
    # directory gives it now (a sign-in under the new spelling makes its own row).
    who = within_bounds(replace(who, username=user.username), source.name)
    changed = claims.directory_user_changed(user, who)
    with ctx.db.write() as session:
        if not rows.hold_setter(session, user):
            return False  # deleted or renamed meanwhile: nothing to refresh
        claims.upsert_directory_user(
            session,
            tenant_id=user.tenant_id,
            identity_source_id=source.id,
            who=who,
            known=user,
        )
    if changed:
        log.info(
            "webhook setter %s of identity source %s refreshed from the directory",
            user.username,
            source.name,
        )
    return changed


def _gone(ctx: BrokerContext, source: SourceView, user: UserRecord) -> tuple[int, int]:
    """Switch off the webhooks ``user`` set up and revoke their API tokens, the directory
    not knowing them any more; how many of each. Their row stays: deleting or disabling
    an account is an administrator's call, and nobody can sign in as a user their
    directory does not know."""
    missing = f"{user.username} is no longer in the directory (identity source {source.name})"
    why = f"its setter {missing}"
    now = utcnow()
    off = 0
    with ctx.db.write() as session:
        if not rows.hold_setter(session, user):
            return 0, 0  # deleted meanwhile: their webhooks and tokens went with them
        for hook in webhook_rows.setters(session, user_id=user.id):
            if vetting.switch_off(session, hook, why, now):
                off += 1
        revoked = rows.revoke_tokens(session, user.id, now)
        for token_id, name, tenant_id in revoked:
            events.append(
                session,
                "admin.delete",
                tenant_id=tenant_id,
                actor="engine",
                user_id=user.id,
                detail={
                    "resource": "api-tokens",
                    "id": token_id,
                    "name": name,
                    "reason": f"its user {missing}",
                },
            )
    if off or revoked:
        log.warning(
            "identity source %s no longer knows %s: %d webhooks switched off, %d API tokens "
            "revoked",
            source.name,
            user.username,
            off,
            len(revoked),
        )
    return off, len(revoked)
