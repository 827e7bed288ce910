"""The stronger-account rule for webhooks: a webhook is its setter's.

A webhook records who last created or changed it (``set_by_user_id``), and it delivers
while they may read events. A global administrator's webhook in a tenant is how they
watch that tenant: if the tenant's own administrator could narrow its kinds, switch it
off, aim it elsewhere or delete it, the tenant being watched would blind the one
watching it. So the setter is treated like the owner of an API token: whoever may not
manage the setter's account (``standing.may_manage``) may not change, delete, test or
retry their webhook either. Any successful change makes the actor its setter, which is
why even a harmless-looking change (a new name, enabling it again) is refused: it would
hand the webhook over.

A webhook that names no setter (made before setters were recorded) stays everyone's as
before, and so does one whose setter's account is gone: a deleted account has no
standing to protect anything. A demoted setter protects only as far as their new role.
"""

from __future__ import annotations

from deskbroker.errors import Forbidden
from deskbroker.services import standing, write_context
from deskbroker.store.db import Unit
from deskbroker.store.tables import User, Webhook


def check_setter(session: Unit, hook: Webhook, what: str) -> None:
    """Refuse to ``what`` (e.g. "change", "delete") ``hook`` when its setter is stronger
    than the unit's actor (attached with ``write_context.attach_actor``), with words
    naming the setter and why. The setter themselves, and anyone when there is no setter
    or their account is gone, may."""
    if hook.set_by_user_id is None:
        return  # made before setters were recorded: editable as it always was
    setter = session.get(User, hook.set_by_user_id)
    if setter is None:
        return  # a deleted account vouches for nothing and protects nothing
    if setter.id == write_context.actor_of(session).user_id:
        return  # one's own webhook (through an API token of one's own too)
    try:
        # Their current role counts (and, for a directory user, what the rules could
        # give them at sign-in), not the role they had when they set it up.
        standing.may_manage(session, setter, f"{what} the webhook {hook.name} set up by")
    except Forbidden as exc:
        raise Forbidden(
            f"{exc.detail}. A webhook is its setter's: it is how {setter.username} watches "
            "this tenant's events, so only an account at least as strong changes, deletes, "
            "tests or retries it"
        ) from None
