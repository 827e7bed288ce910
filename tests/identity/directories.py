"""Real directories for the identity tests: a private slapd on 127.0.0.1 and a Samba AD DC
on a loopback address of its own (AD's ports are fixed: each DC takes its own address)."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3 import MODIFY_REPLACE, Connection, Server, Tls

from tests.helpers import wait_until
from tests.tools import SAMBA, SAMBA_TOOL, SLAPD, require

LDAP_BASE = "dc=example,dc=org"
LDAP_ADMIN = f"cn=admin,{LDAP_BASE}"
LDAP_ADMIN_PASSWORD = "slapd-admin-1"
LDAP_SERVICE = f"cn=svc,{LDAP_BASE}"
LDAP_SERVICE_PASSWORD = "svc-password-1"

AD_REALM = "CORP.EXAMPLE.TEST"
AD_DOMAIN = "corp.example.test"
AD_NETBIOS = "CORP"
AD_BASE = "DC=corp,DC=example,DC=test"
AD_ADMIN_PASSWORD = "Admin-Passw0rd!"
AD_SERVICE = f"CN=svc,CN=Users,{AD_BASE}"
AD_SERVICE_PASSWORD = "Svc-Passw0rd!"
AD_PORTS = (389, 636, 3268, 3269)
#: The loopback addresses a DC may take (the whole 127.0.0.0/8 reaches ``lo``): one per
#: concurrent DC, so parallel test workers, both database legs and other runs on the
#: machine each start their own instead of queueing for 127.0.0.1's fixed ports.
AD_HOSTS = tuple(f"127.0.88.{n}" for n in range(1, 255))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path, host: str = "127.0.0.1"
) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((host, port)) == 0

    wait_until(listening, f"something to listen on {host}:{port}", timeout_s=timeout)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- OpenLDAP --------------------------------------------------------------------------
SLAPD_CONF = """
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload ppolicy
pidfile {dir}/slapd.pid
database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {password}
directory {dir}/db
maxsize 10485760
overlay memberof
memberof-group-oc groupOfNames
overlay ppolicy
ppolicy_default "cn=default,ou=policies,{base}"
ppolicy_use_lockout
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"""


@dataclass
class Slapd:
    """One private slapd with the memberof and ppolicy overlays."""

    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "slapd.conf"
        conf.write_text(
            SLAPD_CONF.format(
                dir=self.directory, base=LDAP_BASE, admin=LDAP_ADMIN, password=LDAP_ADMIN_PASSWORD
            )
        )
        [slapd] = require(SLAPD)
        log = self.directory / "slapd.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [slapd, "-d", "0", "-h", f"{self.url}/", "-f", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, 10, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def admin(self) -> Connection:
        return Connection(
            Server(self.url), LDAP_ADMIN, LDAP_ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True
        )


def load_ldap(slapd: Slapd) -> None:
    """People, groups, a password policy, and accounts locked or reset by it."""
    people = f"ou=people,{LDAP_BASE}"
    with slapd.admin() as c:
        c.add(LDAP_BASE, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
        for ou in ("people", "groups", "policies"):
            c.add(f"ou={ou},{LDAP_BASE}", ["organizationalUnit"], {"ou": ou})
        c.add(
            f"cn=default,ou=policies,{LDAP_BASE}",
            ["pwdPolicy", "device"],
            {
                "cn": "default",
                "pwdAttribute": "userPassword",
                "pwdLockout": "TRUE",
                "pwdMustChange": "TRUE",
            },
        )
        c.add(
            LDAP_SERVICE,
            ["simpleSecurityObject", "organizationalRole"],
            {"cn": "svc", "userPassword": LDAP_SERVICE_PASSWORD},
        )
        for uid, name in (
            ("ann", "Ann Archer"),
            ("ben", "Ben Baker"),
            ("locky", "Lou Locked"),
            ("resetty", "Rita Reset"),
        ):
            c.add(
                f"uid={uid},{people}",
                ["inetOrgPerson"],
                {
                    "uid": uid,
                    "cn": name,
                    "sn": name.split()[1],
                    "mail": f"{uid}@example.org",
                    "departmentNumber": "R&D" if uid == "ann" else "Sales",
                    "userPassword": f"{uid}-password-1",
                },
            )
        c.add(
            f"cn=devs,ou=groups,{LDAP_BASE}",
            ["groupOfNames"],
            {"cn": "devs", "member": [f"uid=ann,{people}", f"uid=locky,{people}"]},
        )
        c.modify(
            f"uid=locky,{people}",
            {"pwdAccountLockedTime": [(MODIFY_REPLACE, ["000001010000Z"])]},
        )
        c.modify(f"uid=resetty,{people}", {"pwdReset": [(MODIFY_REPLACE, ["TRUE"])]})


@contextlib.contextmanager
def running_slapd(directory: Path) -> Iterator[Slapd]:
    slapd = Slapd(directory, free_port())
    slapd.start()
    try:
        load_ldap(slapd)
        yield slapd
    finally:
        slapd.stop()


# --- Samba AD --------------------------------------------------------------------------
@dataclass
class SambaDc:
    directory: Path
    proc: subprocess.Popen[bytes]
    #: The loopback address the DC listens on (``ad_address``).
    host: str

    def url(self, scheme: str = "ldaps", port: int = 636) -> str:
        return f"{scheme}://{self.host}:{port}"

    def admin(self) -> Connection:
        server = Server(self.url(), tls=Tls(validate=ssl.CERT_NONE))
        return Connection(
            server,
            f"Administrator@{AD_DOMAIN}",
            AD_ADMIN_PASSWORD,
            auto_bind=True,
            raise_exceptions=True,
        )


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def ad_address() -> Iterator[str]:
    """A loopback address of ``AD_HOSTS`` whose AD ports are free, held (by a lock file
    per address, which the kernel drops if the process dies) until the block ends."""
    busy: dict[str, list[int]] = {}
    for host in AD_HOSTS:
        with open(f"/tmp/deskbroker-test-samba-ad-{host}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another test process's DC
            taken = [p for p in AD_PORTS if _port_taken(host, p)]
            if taken:
                busy[host] = taken
                continue
            try:
                yield host
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
    raise RuntimeError(
        f"no loopback address of 127.0.88.0/24 has AD's ports {AD_PORTS} free ({busy}): "
        "something listens on them on every address (a system samba or slapd on 0.0.0.0? "
        "`ss -ltnp` names it)"
    )


def provision_samba(directory: Path, host: str) -> None:
    [samba_tool, _] = require(SAMBA_TOOL, SAMBA)
    subprocess.run(
        [
            samba_tool,
            "domain",
            "provision",
            f"--realm={AD_REALM}",
            f"--domain={AD_NETBIOS}",
            "--server-role=dc",
            "--dns-backend=NONE",
            "--use-rfc2307",
            f"--adminpass={AD_ADMIN_PASSWORD}",
            f"--targetdir={directory}",
            # An address with its mask: a bare one that no interface carries is ignored.
            f"--option=interfaces={host}/8",
            "--option=bind interfaces only=yes",
            # LDAP alone: no DNS, Kerberos, SMB or RPC ports to collide with.
            "--option=server services=ldap",
            f"--option=log file={directory}/log.%m",
            f"--option=pid directory={directory}/run",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def start_samba(directory: Path, host: str) -> SambaDc:
    """Samba on the ``host`` its ``provision_samba`` was given (held by ``ad_address``)."""
    [samba] = require(SAMBA)
    (directory / "run").mkdir(exist_ok=True)
    log = directory / "samba.out"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [samba, "-i", "-M", "single", "-s", str(directory / "etc" / "smb.conf")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(636, 30, proc, log, host=host)
    return SambaDc(directory, proc, host)


def _ad_user(c: Connection, name: str, password: str, **extra: Any) -> str:
    dn = f"CN={extra.pop('cn', name)},CN=Users,{AD_BASE}"
    c.add(
        dn,
        ["top", "person", "organizationalPerson", "user"],
        {
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{AD_DOMAIN}",
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": 512,
            **extra,
        },
    )
    return dn


def load_ad(dc: SambaDc) -> None:
    """The service account, a nested group, and accounts disabled, locked or expired."""
    with dc.admin() as c:
        c.modify(AD_BASE, {"lockoutThreshold": [(MODIFY_REPLACE, ["5"])]})
        _ad_user(c, "svc", AD_SERVICE_PASSWORD)
        alice = _ad_user(
            c,
            "alice",
            "Alice-Passw0rd!",
            cn="Alice Smith",
            displayName="Alice Smith",
            mail=f"alice@{AD_DOMAIN}",
            department="Engineering",
        )
        ann = _ad_user(c, "ann", "Ann-Passw0rd!", displayName="Ann of Corp")
        bob = _ad_user(c, "bob", "Bob-Passw0rd!")
        carl = _ad_user(c, "carl", "Carl-Passw0rd!")
        _ad_user(c, "erin", "Erin-Passw0rd!")
        dave = _ad_user(c, "dave", "Dave-Passw0rd!")
        engineers = f"CN=Engineers,CN=Users,{AD_BASE}"
        vdi = f"CN=VDI-Users,CN=Users,{AD_BASE}"
        c.add(engineers, ["top", "group"], {"sAMAccountName": "Engineers", "member": [alice]})
        # VDI-Users holds alice only through Engineers: a nested group.
        c.add(vdi, ["top", "group"], {"sAMAccountName": "VDI-Users", "member": [engineers, ann]})
        c.modify(bob, {"userAccountControl": [(MODIFY_REPLACE, ["514"])]})  # disabled
        c.modify(carl, {"pwdLastSet": [(MODIFY_REPLACE, ["0"])]})  # must change: expired
        c.modify(dave, {"accountExpires": [(MODIFY_REPLACE, ["1"])]})  # expired long ago
    server = Server(dc.url(), tls=Tls(validate=ssl.CERT_NONE))
    for _ in range(5):  # erin locks herself out
        Connection(server, f"erin@{AD_DOMAIN}", "not-her-password").bind()
