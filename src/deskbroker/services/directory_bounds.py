"""A directory's answer about a user, cut to what a user row may hold, with one warning.

The login path (a password checked by a directory, an OpenID provider's sign-in) and the
engine's refresh of webhook setters both write what a directory says of a user into the
user's row (``store.claims.upsert_directory_user``). Both pass the answer through
``within_bounds`` first, so the row, the assignment rule decided at this sign-in and the
one decided after a second factor (read back from the row) all see the same groups.
The bounds and the way they cut are ``domain.user_bounds``.
"""

from __future__ import annotations

import logging

from deskbroker.domain.rules import Identity
from deskbroker.domain.user_bounds import clip_identity

log = logging.getLogger("deskbroker.identity")


def within_bounds(who: Identity, source_name: str) -> Identity:
    """``who`` within the user row's bounds; one warning when the answer was cut, naming
    the source, the user and the counts, never a group or an attribute value."""
    clipped = clip_identity(who)
    if clipped.cuts:
        # One line per answer, so an operator sees which directory to tidy up without
        # the log filling with (possibly personal) directory data.
        log.warning(
            "identity source %s answered more about user %s than a user row keeps: %s",
            source_name,
            who.username,
            "; ".join(clipped.cuts),
        )
    return clipped.identity
