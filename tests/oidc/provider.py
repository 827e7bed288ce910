"""A real OpenID provider (node-oidc-provider, from npm) started by the tests on 127.0.0.1."""

from __future__ import annotations

import json
import os
import select
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.identity.directories import free_port
from tests.tools import NODE, require, require_node_modules

PROVIDER_DIR = Path(__file__).parent / "provider"
BROKER_CALLBACK = "http://testserver/api/v1/auth/oidc/callback"
CLIENT_ID = "deskbroker"
CLIENT_SECRET = "broker-client-secret-0123456789abcdef"
OTHER_CLIENT = "other-app"
SHORT_LIVED_CLIENT = "short-lived"  # its ID tokens live one second
PUBLIC_CLIENT = "deskbroker-cli"  # no secret: PKCE and the device code alone
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

ACCOUNTS: dict[str, dict[str, Any]] = {
    "ann": {
        "password": "ann-provider-pw",
        "claims": {
            "preferred_username": "ann",
            "name": "Ann Archer",
            "email": "ann@example.org",
            "email_verified": True,
            "groups": ["engineers", "staff"],
        },
    },
    "carl": {
        "password": "carl-provider-pw",
        "claims": {
            "preferred_username": "carl",
            "name": "Carl Cole",
            "email": "carl@example.org",
            "groups": ["sales"],
        },
    },
    "nina": {  # no preferred_username: the source must take the email instead
        "password": "nina-provider-pw",
        "claims": {
            "name": "Nina Noname",
            "email": "nina@example.org",
            "email_verified": True,
            "groups": [],
        },
    },
    "ann2": {  # another account (sub) that calls itself ann at the provider
        "password": "ann2-provider-pw",
        "claims": {
            "preferred_username": "ann",
            "name": "Not Ann",
            "email": "ann@example.org",
            "groups": ["engineers"],
        },
    },
}


def _client(
    client_id: str, secret: str | None, callbacks: tuple[str, ...] = (BROKER_CALLBACK,)
) -> dict[str, Any]:
    return {
        "client_id": client_id,
        **({"client_secret": secret} if secret else {}),
        "redirect_uris": list(callbacks),
        "grant_types": ["authorization_code", DEVICE_GRANT],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
    }


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    proc: subprocess.Popen[bytes]


@contextmanager
def running_provider(
    directory: Path, callbacks: tuple[str, ...] = (BROKER_CALLBACK,)
) -> Iterator[OidcProvider]:
    """The provider; ``callbacks`` are the broker callback URLs its main client accepts
    (a broker on a real port, for a real browser, adds its own)."""
    [node] = require(NODE)
    require_node_modules(PROVIDER_DIR, "oidc-provider")
    port = free_port()
    config = directory / "provider.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "clients": [
                    _client(CLIENT_ID, CLIENT_SECRET, callbacks),
                    _client(OTHER_CLIENT, "other-app-secret-0123456789abcdef"),
                    _client(SHORT_LIVED_CLIENT, "short-lived-secret-0123456789abcd"),
                    _client(PUBLIC_CLIENT, None),
                ],
                "accounts": ACCOUNTS,
                "id_token_ttl": {SHORT_LIVED_CLIENT: 1},
            }
        )
    )
    log = directory / "provider.log"
    with log.open("wb") as errors:
        proc = subprocess.Popen(
            [node, str(PROVIDER_DIR / "provider.mjs"), str(config)],
            stdout=subprocess.PIPE,
            stderr=errors,
            env={**os.environ, "NODE_ENV": "test"},
        )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        said: dict[str, bytes] = {"line": b""}

        def ready() -> bool:
            if select.select([stdout], [], [], 0.2)[0]:
                said["line"] = stdout.readline()
            if proc.poll() is not None and not said["line"].startswith(b"ready"):
                pytest.fail(f"the OpenID provider exited: {log.read_text()[-2000:]}")
            return said["line"].startswith(b"ready")

        wait_until(
            ready,
            lambda: f"the OpenID provider to start: {log.read_text()[-2000:]}",
            timeout_s=20,
            interval_s=0,
        )
        line = said["line"]
        yield OidcProvider(line.split()[1].decode(), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
