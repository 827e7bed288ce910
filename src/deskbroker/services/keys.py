"""Rotating the broker's secret key: every sealed value moved to the current key.

During a rotation the brokers run with the new ``DESKBROKER_SECRET_KEY`` and the old one
in ``DESKBROKER_SECRET_KEY_PREVIOUS``; ``reseal`` then seals the stored secrets again
under the new key, so that the old key can go without losing a center password, a bind
password, a client secret or an enrolled authenticator.
"""

from __future__ import annotations

from deskbroker.services.context import BrokerContext
from deskbroker.store.config_version import bump_config_version
from deskbroker.store.sealed import sealed_rows


def reseal(ctx: BrokerContext) -> int:
    """Seal every stored secret again under the current key (in one transaction: all or
    nothing); returns how many values were resealed. A value no key opens stops it with
    ``ValueError``, naming where it is. The configuration version moves with it (every
    tenant's), so the other nodes' caches reload the resealed values at once instead of
    at their next reload."""
    count = 0
    with ctx.db.write() as session:
        for row, column in sealed_rows(session):
            try:
                setattr(row, column, ctx.secrets.reseal(getattr(row, column)))
            except ValueError as exc:
                raise ValueError(
                    f"{row.__tablename__} {row.id}: {column} opens with none of the "
                    "broker's keys; give the key it was sealed with in "
                    "DESKBROKER_SECRET_KEY_PREVIOUS"
                ) from exc
            count += 1
        if count:
            bump_config_version(session, None)
    return count
