"""``deskbroker login --oidc SOURCE``: the device flow (RFC 8628) through a broker.

The CLI never talks to the identity provider: it asks the broker for a user code, shows
it, and polls the broker until the user has approved the sign-in in a browser (on any
device). The broker's token is then kept in a token cache readable only by the user.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console


class LoginFailed(Exception):
    """The sign-in did not finish; the message says why, in words."""


@dataclass(frozen=True)
class StoredToken:
    url: str
    token: str
    expires_at: int
    username: str


def default_token_file() -> Path:
    """``$DESKBROKER_TOKEN_FILE``, else ``deskbroker/token.json`` in the user's config dir."""
    explicit = os.environ.get("DESKBROKER_TOKEN_FILE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deskbroker" / "token.json"


def store_token(path: Path, stored: StoredToken) -> None:
    """Writes the token cache with mode 0600 from the start: a bearer token is a secret."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(stored.__dict__, handle)
    os.replace(temporary, path)


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"the broker answered HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return f"the broker answered HTTP {response.status_code}"


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    try:
        return http.post(path, json=body)
    except httpx.HTTPError as exc:
        raise LoginFailed(f"the broker at {http.base_url} did not answer ({exc})") from exc


def device_login(
    url: str,
    source: str,
    *,
    tenant: str | None,
    console: Console,
    timeout_s: float = 30.0,
) -> StoredToken:
    """Runs the device flow; returns the broker's token once the user approved."""
    base = url.rstrip("/")
    with httpx.Client(base_url=base, timeout=timeout_s) as http:
        started = _post(http, f"/api/v1/auth/oidc/{source}/device", {"tenant": tenant})
        if started.status_code != 200:
            raise LoginFailed(_problem(started))
        grant = started.json()
        where = grant.get("verification_uri_complete") or grant["verification_uri"]
        console.print(
            f"To sign in, open [bold]{where}[/] in a browser and check that it shows the "
            f"code [bold]{grant['user_code']}[/]."
        )
        interval = float(grant.get("interval") or 5)
        deadline = time.monotonic() + float(grant.get("expires_in") or 600)
        with console.status("waiting for you to approve the sign-in"):
            while time.monotonic() < deadline:
                time.sleep(interval)
                answer = _post(
                    http, "/api/v1/auth/oidc/device/poll", {"device_handle": grant["device_handle"]}
                )
                if answer.status_code == 428:
                    interval = float(answer.headers.get("Retry-After") or interval)
                    continue
                if answer.status_code != 200:
                    raise LoginFailed(_problem(answer))
                body = answer.json()
                return StoredToken(base, body["token"], int(body["expires_at"]), body["username"])
    raise LoginFailed("the sign-in was not approved in time; run the command again")


def load_token(path: Path) -> StoredToken | None:
    """The cached token, or None. A cache others can read is closed to 0600 first: a
    bearer token is a secret (a copy or an editor may have widened its mode)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & 0o077:
        os.chmod(path, 0o600)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return StoredToken(
            str(data["url"]), str(data["token"]), int(data["expires_at"]), str(data["username"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_token(path: Path) -> None:
    """Removes the token cache (after a logout)."""
    path.unlink(missing_ok=True)
