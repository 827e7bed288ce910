"""One vCenter session per center, every call under a whole-call deadline.

pyvmomi's calls block on HTTPS; a vCenter that stops answering would hold the calling
thread. So each call runs on a capped helper thread (``Helpers``, the pattern of the
OpenStack and libvirt drivers) that the caller waits for at most ``timeout_s``. pyvmomi's
sockets have no read timeout of their own (``connectionPoolTimeout`` closes idle
connections only, and the version discovery that starts a login sets none), so the TLS
context gives each socket it wraps ``timeout_s`` (``_NamedTLS``): a server that accepts
and stays silent lets the helper go at the deadline. One that drips its answer, a byte
within each timeout, still holds it until it lets go. So, as for the clouds,
one tenant's calls hold at most ``MAX_PER_OWNER`` of the helpers: a tenant
administrator's silent or dripping server cannot leave another tenant's vCenter calls
without one.

The session is opened lazily and shared by every driver of one host, user and password
(the engine's, the API's and the plans' caches each open a driver); a session vCenter
forgot (``NotAuthenticated``) is dropped and opened again on the next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from deskbroker import outbound
from deskbroker.centers.base import QuotaExceeded
from deskbroker.centers.openstack.overdue import MAX_PER_OWNER, Helpers, NoHelperLeft, Overdue
from deskbroker.centers.vsphere.params import VsphereParams
from deskbroker.errors import CenterError, unanswered

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Helper threads for vCenter calls in one process: their own places, so a hung vCenter
#: cannot take a cloud's or a libvirt host's; one tenant's calls hold at most
#: ``MAX_PER_OWNER`` of them.
VSPHERE_CALLS = Helpers(32, MAX_PER_OWNER, "vCenters")

# vCenter's ways of saying there is no room: the build may fit later, so the pool waits.
CAPACITY_FAULTS: tuple[type[Exception], ...] = (
    vim.fault.InsufficientResourcesFault,
    vim.fault.NoDiskSpace,
    vim.fault.OutOfBounds,
)


def words(fault: BaseException) -> str:
    """A fault's message on one line and short; vCenter's messages name objects, never
    the credentials (a login fault is reported by the broker's own words)."""
    text = getattr(fault, "msg", None) or type(fault).__name__
    return " ".join(str(text).split())[:300]


class _NamedTLS(ssl.SSLContext):
    """A client context that verifies the server as ``server_name`` (and sends it as
    SNI), though pyvmomi opens the socket to an address: the checked address is
    connected to, the certificate must still be the one of the name in the params."""

    server_name = ""
    # Every socket pyvmomi opens through this context (the login's version discovery
    # included, which sets no timeout of its own) waits at most this long for a read: a
    # vCenter that accepts and stays silent lets its helper go at the call's deadline.
    read_timeout_s: float | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        if self.read_timeout_s is not None:
            sock.settimeout(self.read_timeout_s)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )


class _Link:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.si: vim.ServiceInstance | None = None


_links: dict[tuple[str, int, str, str], _Link] = {}
_links_lock = threading.Lock()


class Vcenter:
    """The session with one vCenter and the deadline around each call."""

    def __init__(self, params: VsphereParams, secrets: Mapping[str, str]) -> None:
        self.params = params
        self._password = secrets.get("password", "")
        # The TLS settings are part of the key: a session opened trusting one CA is not
        # reused by a center that trusts another.
        digest = hashlib.sha256(
            "\0".join([self._password, params.ca_pem or "", str(params.insecure)]).encode()
        ).hexdigest()
        self._key = (params.host, params.port, params.username, digest)
        self.calls = 0
        # The tenant whose center this is (the driver's ``belongs_to``): its calls count
        # against its share of the helpers. Empty only outside the broker's driver cache.
        self.owner = ""

    def _link(self) -> _Link:
        with _links_lock:
            return _links.setdefault(self._key, _Link())

    def _checked_address(self) -> str:
        """The address to connect to: every address vCenter's name resolves to passes the
        outbound policy, and the first is the one connected to. pyvmomi would resolve
        the name again, and a name may answer differently the second time (DNS
        rebinding), so it is given the checked address, never the name."""
        host = self.params.host.strip("[]")
        try:
            found = socket.getaddrinfo(host, self.params.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise CenterError(f"vCenter {host} does not resolve: {exc}") from exc
        policy = outbound.current()
        for *_, target in found:
            policy.check_address(str(target[0]), f"vCenter {host}")
        return str(found[0][4][0])

    def _tls(self) -> ssl.SSLContext:
        """TLS as for the name written in the params, whatever address is connected to."""
        context = _NamedTLS(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
        context.server_name = self.params.host.strip("[]")
        context.read_timeout_s = self.params.timeout_s
        if self.params.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.params.ca_pem:
            context.load_verify_locations(cadata=self.params.ca_pem)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context

    def _open(self) -> vim.ServiceInstance:
        address = self._checked_address()
        try:
            return SmartConnect(
                host=address,
                port=self.params.port,
                user=self.params.username,
                pwd=self._password,
                sslContext=self._tls(),
                connectionPoolTimeout=self.params.timeout_s,
            )
        except vim.fault.InvalidLogin:
            raise CenterError(
                f"vCenter {self.params.host} refused user {self.params.username!r}: "
                "check the user name and the password secret"
            ) from None
        except ssl.SSLError as exc:
            raise CenterError(
                f"vCenter {self.params.host}: TLS verification failed ({exc.reason}); "
                "give its CA in ca_pem"
            ) from None
        except TimeoutError:
            raise  # the socket's read timeout: the call's own words (``call``)
        except (OSError, vmodl.MethodFault) as exc:
            raise CenterError(
                f"cannot connect to vCenter {self.params.host}: {words(exc)}"
            ) from None

    def service(self) -> vim.ServiceInstance:
        """The shared session, opened on first use or after it was lost."""
        link = self._link()
        with link.lock:
            if link.si is None:
                link.si = self._open()
            return link.si

    def _drop(self) -> None:
        link = self._link()
        with link.lock:
            link.si = None

    def call(
        self,
        work: Callable[[vim.ServiceInstance], T],
        what: str,
        *,
        timeout_s: float | None = None,
    ) -> T:
        """``work(service instance)`` on a helper thread, given up on after
        ``timeout_s`` (the center's, or the one given: a clone's is the build's),
        logging in included. vCenter faults become ``CenterError``
        naming ``what`` (``QuotaExceeded`` for the capacity faults); the broker's own
        errors raised by ``work`` pass as they are."""
        self.calls += 1
        limit = timeout_s or self.params.timeout_s
        deadline = time.monotonic() + limit

        def run() -> T:
            si = self.service()
            try:
                return work(si)
            except vim.fault.NotAuthenticated:
                # vCenter forgot the session (expired, restarted): once more, anew.
                self._drop()
                return work(self.service())

        try:
            return VSPHERE_CALLS.run(
                run, deadline - time.monotonic(), "vsphere-call", owner=self.owner
            )
        except (Overdue, TimeoutError) as exc:
            # The socket's read timeout (``_NamedTLS``) may fire a moment before the
            # helper's wait ends: the same "no answer", whichever comes first.
            if isinstance(exc, TimeoutError):
                self._drop()
            raise unanswered(
                CenterError(f"{what}: vCenter {self.params.host} did not answer within {limit:g} s")
            ) from None
        except NoHelperLeft as exc:
            raise CenterError(
                f"{what}: not asked, since {exc}; the broker waits for them to end first"
            ) from None
        except CAPACITY_FAULTS as exc:
            raise QuotaExceeded(f"{what}: vCenter has no room: {words(exc)}") from None
        except vmodl.MethodFault as exc:
            log.warning("%s: vCenter fault %s: %s", what, type(exc).__name__, words(exc))
            raise CenterError(f"{what}: {words(exc)}") from None
        except OSError as exc:
            self._drop()
            raise CenterError(f"{what}: vCenter {self.params.host}: {exc}") from None

    def close(self) -> None:
        """Log out of the shared session (a test's clean-up; the broker keeps it)."""
        with _links_lock:
            link = _links.pop(self._key, None)
        if link is None:
            return
        with link.lock:
            si, link.si = link.si, None
        if si is not None:
            with contextlib.suppress(Exception):
                Disconnect(si)


def wait_task(task: vim.Task, deadline: float, what: str) -> Any:
    """The result of a vCenter task, raising its fault; gives up at ``deadline`` (the
    call's own), so a helper never outlives the call that started it by long."""
    pause = 0.05
    while True:
        info = task.info
        if info.state == vim.TaskInfo.State.success:
            return info.result
        if info.state == vim.TaskInfo.State.error:
            raise info.error
        if time.monotonic() >= deadline:
            raise CenterError(f"{what}: vCenter task {task._moId} still running at the deadline")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
