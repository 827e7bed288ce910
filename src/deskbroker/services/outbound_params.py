"""What the admin API checks in the params of a center or an identity source that make the
broker reach out: host-side credentials and files, the outbound network policy, and the
secrets that belong to a URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from deskbroker import outbound
from deskbroker.errors import Forbidden
from deskbroker.services import write_context
from deskbroker.services.context import BrokerContext
from deskbroker.store.db import Unit

# The params that decide whether a connection is private and goes to the server it names:
# a secret given over verified TLS must not go out once someone switches TLS off, drops
# StartTLS on ldap:// or trusts another CA (a file on the broker host, or a PEM bundle
# given in the params, as the vSphere driver's).
_TLS_PARAMS = ("verify_tls", "start_tls", "ca_file", "ca_pem", "insecure")


def _connection(model: BaseModel) -> list[tuple[str, str]]:
    """What a stored secret was given for: every URL or host it is sent to, host-side
    settings and the TLS settings of the connection. Targets no secret goes to (a static
    machine's address) are left out: adding or moving a machine keeps its BMC passwords."""
    found = [(t.param, t.value) for t in outbound.targets_of(model) if t.carries_secret]
    found += [(name, str(getattr(model, name))) for name in outbound.host_side_of(model)]
    found += [(name, str(getattr(model, name))) for name in _TLS_PARAMS if hasattr(model, name)]
    return sorted(found)


def _scoped(session: Unit) -> bool:
    """Whether the write is made with an API token (its scopes set), not a person's
    session token."""
    actor = write_context.actor_if_any(session)
    return actor is not None and actor.scoped


def vet(
    session: Unit,
    ctx: BrokerContext,
    *,
    what: str,
    params_model: type[BaseModel],
    params: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    data: dict[str, Any],
) -> None:
    """Check validated ``params`` about to be saved by the admin whose role the write
    session carries; ``previous`` are the stored params of an update.

    - Params that read the broker host's own files or credentials (a clouds.yaml entry,
      a CA file) are for a global admin only, signed in (never an API token, whatever
      its scopes): a tenant admin or a script would borrow the operator's.
    - Every host written in them passes the outbound policy (names are checked again,
      resolved, on every connection).
    - When a URL or host a secret goes to (with its port), or a TLS setting
      (``verify_tls``, ``start_tls``, ``ca_file``, ``ca_pem``, ``insecure``), changes and
      the request gives no new secrets, the stored ones are dropped (``secrets_sealed``
      set to ``None`` in ``data``): a password given for one server must not be sent to
      another.
    """
    model = params_model.model_validate(dict(params))
    host_side = outbound.host_side_of(model)
    actor = write_context.actor_if_any(session)
    if host_side and (actor is None or not actor.is_global_admin):
        raise Forbidden(
            f"only a global administrator may set {what} params {', '.join(host_side)}: "
            "they use the broker host's own files and credentials; give the connection "
            "details and secrets of your own account instead"
        )
    if host_side and _scoped(session):
        # A scoped token is automation holding a slice of the admin's power; the host's
        # own credentials are not in any slice, whatever its scopes say.
        raise Forbidden(
            f"{what} params {', '.join(host_side)} use the broker host's own files and "
            "credentials: a global administrator sets them signed in, not with an API token"
        )
    policy = ctx.settings.outbound_policy
    for target in outbound.targets_of(model):
        if target.host:
            policy.check_host(target.host, f"{what} params.{target.param}")
    if previous is None or "secrets" in data:
        return
    try:
        before = _connection(params_model.model_validate(dict(previous)))
    except ValueError:
        before = []  # stored under older rules: treat as changed
    if before != _connection(model):
        data["secrets_sealed"] = None
