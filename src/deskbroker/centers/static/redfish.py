"""Power control of a physical machine through its BMC's Redfish service (DMTF DSP0266).

One conversation per call: log in (a session, or HTTP basic auth), find the
ComputerSystem, read its power state or ask ``ComputerSystem.Reset``, and log out (BMCs
hold few sessions). The reset types the BMC lists in
``ResetType@Redfish.AllowableValues`` decide between the graceful and the forced one.
Every path the BMC names (a session's ``Location``, an action's ``target``, a system's
``@odata.id``) is taken as a path on the configured BMC: credentials and tokens never go
to a host the BMC's answer names. The whole conversation runs under one deadline on a
capped helper thread, like every center call: every connect, send and read keeps to it
(``outbound_http.deadline``), so a BMC that drips its answer a byte at a time, beating
each read's timeout, is cut off and the helper freed. One tenant's conversations hold
at most ``MAX_PER_OWNER`` of the helpers, so its BMCs cannot take another tenant's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from deskbroker import outbound_http
from deskbroker.centers.openstack.overdue import MAX_PER_OWNER, Helpers, NoHelperLeft, Overdue
from deskbroker.domain.states import PowerState
from deskbroker.errors import CenterError
from deskbroker.outbound import OutboundRefused

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Helper threads for BMC conversations (their own places: a hung BMC takes no cloud's);
#: one tenant's conversations hold at most ``MAX_PER_OWNER`` of them.
BMC_CALLS = Helpers(32, MAX_PER_OWNER, "BMCs")

_STATES = {
    "On": PowerState.RUNNING,
    "PoweringOn": PowerState.RUNNING,
    "Off": PowerState.STOPPED,
    "PoweringOff": PowerState.STOPPED,
    "Paused": PowerState.SUSPENDED,
}


class RedfishConfig(BaseModel):
    """A machine's BMC. Its password is the center secret named by ``password_secret``."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(description="the BMC's base URL, e.g. https://bmc-lab1.example.org")
    username: str = Field(min_length=1, max_length=255)
    password_secret: str = Field(
        default="redfish_password",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="the center secret holding the BMC password",
    )
    auth: Literal["session", "basic"] = "session"
    system: str | None = Field(
        default=None,
        pattern=r"^/redfish/v1/Systems/[A-Za-z0-9_.:-]{1,100}$",
        description="the ComputerSystem (default: the BMC's only one)",
    )
    verify_tls: bool = True
    timeout_s: float = Field(default=20.0, gt=0, le=300)


class RedfishFailure(CenterError):
    """The BMC refused or failed a request."""


class NotAsked(RedfishFailure):
    """The BMC was not asked: the tenant's share of the BMC helpers (or the process's)
    was taken. Says nothing of the machine: a listing keeps what it knew."""


def _path(reference: object, what: str) -> str:
    """The path of a reference the BMC gave: only ever asked of the configured BMC."""
    path = urlsplit(str(reference or "")).path
    if not path.startswith("/redfish/"):
        raise RedfishFailure(f"the BMC named {what} outside /redfish/")
    return path


class RedfishBMC:
    """The Redfish service of one machine's BMC."""

    def __init__(self, config: RedfishConfig, password: str, machine: str, owner: str = "") -> None:
        self.config = config
        self._password = password
        self.machine = machine
        # The tenant whose center names this BMC: its conversations count against its
        # share of the helpers. Empty only outside the broker's driver cache.
        self.owner = owner

    def power_state(self) -> PowerState:
        """The system's ``PowerState`` as the broker's."""

        def read(client: httpx.Client) -> PowerState:
            system = self._get(client, self._system(client))
            return _STATES.get(str(system.get("PowerState")), PowerState.UNKNOWN)

        return self._conversation(read, "read the power state")

    def reset(self, preferred: Sequence[str], *, unless: str | None = None) -> str:
        """Ask ``ComputerSystem.Reset`` with the first of ``preferred`` the BMC allows
        (the first one when it lists none); nothing when the system's ``PowerState``
        already is ``unless``. Returns the reset type sent, or "" when none was."""

        def act(client: httpx.Client) -> str:
            path = self._system(client)
            system = self._get(client, path)
            if unless is not None and system.get("PowerState") == unless:
                return ""
            action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
            target = _path(
                action.get("target") or f"{path}/Actions/ComputerSystem.Reset", "its reset"
            )
            allowed = action.get("ResetType@Redfish.AllowableValues")
            choices = [t for t in preferred if not allowed or t in allowed]
            if not choices:
                offered = ", ".join(str(a) for a in allowed or [])
                raise RedfishFailure(
                    f"the BMC of {self.machine} allows no reset of type "
                    f"{' or '.join(preferred)} (it allows {offered})"
                )
            self._check(client.post(target, json={"ResetType": choices[0]}), "reset")
            return choices[0]

        return self._conversation(act, f"reset ({preferred[0]})")

    # --- the conversation -------------------------------------------------------------
    def _conversation(self, work: Callable[[httpx.Client], T], what: str) -> T:
        said = f"{self.machine}'s BMC: {what}"
        deadline = time.monotonic() + self.config.timeout_s

        def run() -> T:
            # httpx's timeout bounds each read, which a dripping BMC beats for ever; the
            # deadline bounds them all, so the helper ends when the caller gives up.
            with (
                outbound_http.deadline(deadline - time.monotonic()),
                httpx.Client(
                    base_url=str(self.config.url).rstrip("/"),
                    transport=outbound_http.guarded_transport(verify=self.config.verify_tls),
                    timeout=self.config.timeout_s,
                    follow_redirects=False,
                    headers={"Accept": "application/json", "OData-Version": "4.0"},
                ) as client,
            ):
                session = self._log_in(client)
                try:
                    return work(client)
                finally:
                    if session:
                        with contextlib.suppress(httpx.HTTPError):
                            client.delete(session)

        try:
            return BMC_CALLS.run(run, deadline - time.monotonic(), "redfish-call", self.owner)
        except (Overdue, httpx.TimeoutException):
            # The helper's own deadline may fire a moment before the caller's wait ends:
            # the same "no answer", whichever comes first.
            raise RedfishFailure(f"{said}: no answer within {self.config.timeout_s:g} s") from None
        except NoHelperLeft as exc:
            raise NotAsked(f"{said}: not asked, since {exc}") from None
        except OutboundRefused as exc:
            raise RedfishFailure(f"{said}: {exc.detail}") from exc
        except RedfishFailure as exc:
            raise RedfishFailure(f"{said}: {exc.detail}") from exc
        except httpx.HTTPError as exc:
            # Its text can quote the BMC's answer: name the failure, log the rest.
            log.warning("%s: %s", said, exc)
            raise RedfishFailure(f"{said}: the BMC is unreachable ({type(exc).__name__})") from exc

    def _log_in(self, client: httpx.Client) -> str:
        """Authenticate the client; returns the session to delete afterwards, if any."""
        if self.config.auth == "basic":
            client.auth = httpx.BasicAuth(self.config.username, self._password)
            return ""
        response = client.post(
            "/redfish/v1/SessionService/Sessions",
            json={"UserName": self.config.username, "Password": self._password},
        )
        self._check(response, "log in")
        token = response.headers.get("X-Auth-Token")
        if not token:
            raise RedfishFailure("the BMC gave no X-Auth-Token for the session")
        client.headers["X-Auth-Token"] = token
        where = response.headers.get("Location") or _json(response).get("@odata.id")
        return _path(where, "its session") if where else ""

    def _system(self, client: httpx.Client) -> str:
        if self.config.system:
            return self.config.system
        members = self._get(client, "/redfish/v1/Systems").get("Members") or []
        if len(members) != 1:
            raise RedfishFailure(
                f"the BMC manages {len(members)} systems: set redfish.system to the one "
                "of this machine"
            )
        return _path(members[0].get("@odata.id"), "its system")

    def _get(self, client: httpx.Client, path: str) -> dict[str, Any]:
        response = client.get(path)
        self._check(response, f"GET {path}")
        return _json(response)

    @staticmethod
    def _check(response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in (401, 403):
            raise RedfishFailure(
                f"{what}: the BMC refused the credentials ({status}); check the user, its "
                "role (Operator or Administrator) and the password secret"
            )
        message = ""
        error = _json(response).get("error")
        if isinstance(error, dict):
            extended = error.get("@Message.ExtendedInfo") or []
            first = extended[0] if extended and isinstance(extended[0], dict) else {}
            message = str(first.get("Message") or error.get("message") or "")
        said = " ".join(message.split())[:200] or f"HTTP {status}"
        raise RedfishFailure(f"{what}: {said} ({status})")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
