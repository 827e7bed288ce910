"""``deskbroker connect login --oidc``: the user's CLI signs in by the device flow and
keeps the broker's URL in its config file and the token in a 0600 cache."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deskbroker.services.context import BrokerContext
from tests.connect_support import client_env, live_broker
from tests.helpers import Api
from tests.identity.sources import group_policy
from tests.oidc.flows import add_oidc_source
from tests.oidc.provider import PUBLIC_CLIENT, OidcProvider
from tests.oidc.test_device import approve

CLI = (sys.executable, "-m", "deskbroker.cli", "connect")


@pytest.fixture
def broker(ctx: BrokerContext) -> Iterator[str]:
    with live_broker(ctx) as url:
        yield url


def test_connect_login_by_device_flow_then_list(
    api: Api, oidc_provider: OidcProvider, broker: str, tmp_path: Path
) -> None:
    source = add_oidc_source(api, oidc_provider, name="sso", secret=None, client_id=PUBLIC_CLIENT)
    group_policy(api, source["id"], "engineers")
    env = {
        **os.environ,
        **client_env(tmp_path, tmp_path / "bin"),
        "PATH": os.environ.get("PATH", ""),
        "COLUMNS": "400",
        "PYTHONUNBUFFERED": "1",
    }
    cli = subprocess.Popen(
        [*CLI, "login", "--oidc", "sso", "--url", broker],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        found = re.search(r"open (\S+) in a browser", line)
        assert found, line
        approve(found.group(1), "ann")
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, out
    assert f"signed in at {broker} as ann" in out
    token_file = tmp_path / "config" / "deskbroker" / "token.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads(token_file.read_text())["username"] == "ann"
    config = (tmp_path / "config" / "deskbroker" / "config.toml").read_text()
    assert config == f'url = "{broker}"\n'
    listed = subprocess.run(
        [*CLI, "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    # The device flow's login claimed a desktop of the group's pool.
    assert "desktop" in listed.stdout and "you hold no desktop" not in listed.stdout
