"""The users and groups of the test NIS domain, and shortcuts to add it as a source."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tests.helpers import Api
from tests.identity.nis_server import NisSite, mkpasswd

# The login-form domain of the NIS source ("ann@nis.example"), not the NIS domain.
LOGIN_DOMAIN = "nis.example"


def _days_ago(days: int) -> int:
    return (datetime.now(UTC).date() - date(1970, 1, 1)).days - days


def nis_users() -> list[str]:
    """passwd lines; those with shadow fields after the seventh go to shadow.byname.

    The hashes are made by mkpasswd and openssl, not by the broker's own code."""
    recent = _days_ago(10)
    return [
        # Hashes in passwd.byname itself (MERGE_PASSWD=true), each in its method.
        f"ann:{mkpasswd('ann-password-1', 'yescrypt')}:2001:100:Ann Archer,Room 1,,:"
        "/home/ann:/bin/bash",
        f"ben:{mkpasswd('ben-password-1', 'md5crypt')}:2002:100:Ben Baker:/home/ben:/bin/sh",
        # Debian's default: "x" in passwd, the hash in shadow.byname (privileged ports).
        f"cid:{mkpasswd('cid-password-1', 'sha512crypt')}:2003:3001:Cid Cole:/home/cid:"
        f"/bin/bash:{recent}:0:99999:7:::",
        # passwd -l puts a "!" before the hash; "*" is an account with no password.
        f"locky:!{mkpasswd('locky-password-1', 'yescrypt')}:2004:100:Lou Locked:/:/bin/sh",
        "daemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
        # chage -d 0: must change; an account that expired on 1970-01-02.
        f"oldie:{mkpasswd('oldie-password-1', 'yescrypt')}:2005:100:Old Ie:/:/bin/sh"
        ":0:0:99999:7:::",
        f"gone:{mkpasswd('gone-password-1', 'yescrypt')}:2006:100:Gone:/:/bin/sh"
        f":{recent}:0:99999:7::1:",
    ]


def nis_groups() -> list[str]:
    return [
        "staff:*:100:",
        "devs:*:3000:ann,locky",
        "ops:*:3001:",
        "printers:*:3002:ben,cid",
    ]


def nis_params(site: NisSite, **extra: Any) -> dict[str, Any]:
    return {
        "domain": site.domain,
        "servers": [site.server],
        "timeout_s": 3,
        "connect_timeout_s": 1,
        **extra,
    }


def add_nis_source(
    api: Api,
    site: NisSite,
    *,
    name: str = "campus",
    login_domain: str = LOGIN_DOMAIN,
    **extra: Any,
) -> dict[str, Any]:
    """A NIS source; ``extra`` overrides its params (``domain`` is the NIS domain)."""
    body = {"name": name, "kind": "nis", "domain": login_domain}
    return api.post("identity-sources", {**body, "params": nis_params(site, **extra)})
