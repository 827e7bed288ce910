"""The broker behind a real PgBouncer in transaction mode (``db_pgbouncer``).

Transaction pooling hands each transaction whichever server connection is free, so
anything a broker kept on a session (prepared statements, SET, LISTEN, session advisory
locks) would be lost or seen by another client. The test runs concurrent logins, connects
and engine work through PgBouncer with fewer server connections than clients, many
times over the same statements, and checks that every desktop went to one user. Without
``db_pgbouncer`` the same test fails at once: psycopg's prepared statement ``_pg3_0``
"already exists" on a server connection another client prepared it on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from deskbroker.api.app import create_app
from deskbroker.bootstrap import ensure_defaults
from deskbroker.config import Settings
from deskbroker.engine.runner import Engine
from deskbroker.services.context import BrokerContext
from deskbroker.store.db import Database
from deskbroker.store.migrate import upgrade
from tests.browser_support import live_broker
from tests.conftest import LOOPBACK, PG_ADMIN
from tests.helpers import USER_PASSWORD, Api, wait_until
from tests.identity.directories import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
USERS = 24
DESKTOPS = 16


@pytest.fixture
def bounced_database() -> Iterator[str]:
    """A migrated PostgreSQL database of its own, reached through PgBouncer (transaction
    mode, 3 server connections) on a free loopback port: its URL."""
    name = f"deskbroker_bouncer_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    direct = Database(f"{base}/{name}")
    upgrade(direct)
    direct.dispose()
    # PgBouncer will not run as root: it drops to nobody, who must read its files.
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n{name} = host=127.0.0.1 port=5432 dbname={name} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 200\n"
        "logfile =\npidfile =\nignore_startup_parameters = extra_float_digits\n"
    )
    for file in folder.iterdir():
        file.chmod(0o644)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    bouncer = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

    def answers() -> bool:
        assert bouncer.poll() is None, bouncer.stderr.read().decode() if bouncer.stderr else ""
        try:
            with psycopg.connect(url.replace("+psycopg", ""), prepare_threshold=None) as c:
                return c.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    try:
        wait_until(answers, "PgBouncer to answer", timeout_s=20)
        yield url
    finally:
        bouncer.terminate()
        bouncer.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_logins_connects_and_the_engine_through_pgbouncer_in_transaction_mode(
    bounced_database: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=bounced_database,
        db_pgbouncer=True,
        secret_key="test-secret-" + uuid.uuid4().hex,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        db_pool_size=8,
        engine_tick_s=0.1,
        provision_interval_s=0.5,
        # The seeded static desktops sit on 127.0.1.x, which the default policy denies.
        outbound_allow=LOOPBACK,
    )
    ctx = BrokerContext.from_settings(settings)
    ensure_defaults(ctx)
    engine = Engine(ctx, workers=4)
    engine.start()
    try:
        with TestClient(create_app(ctx)) as client:
            admin = Api.with_admin(client, ctx)
            admin.seed_pool(DESKTOPS, users=USERS)
        with live_broker(ctx) as url, httpx.Client(base_url=f"{url}/api/v1", timeout=60) as http:

            def sign_in(i: int) -> dict[str, object]:
                # Each user signs in twice: the same statements many times over, on
                # whichever server connection PgBouncer gives each transaction.
                for _ in range(2):
                    answer = http.post(
                        "/auth/login", json={"username": f"user{i}", "password": USER_PASSWORD}
                    )
                    assert answer.status_code == 200, answer.text
                offer = answer.json()["offers"][0]
                if offer["status"] == "assigned":
                    token = {"Authorization": f"Bearer {answer.json()['token']}"}
                    desktop = offer["desktop"]["id"]
                    connected = http.post(
                        f"/client/desktops/{desktop}/connect", json={}, headers=token
                    )
                    assert connected.status_code == 200, connected.text
                return dict(offer)

            with ThreadPoolExecutor(8) as pool:
                offers = list(pool.map(sign_in, range(USERS)))
        assigned = [o["desktop"]["id"] for o in offers if o["status"] == "assigned"]  # type: ignore[index]
        queued = sorted(int(o["position"]) for o in offers if o["status"] == "queued")  # type: ignore[call-overload]
        assert len(assigned) == DESKTOPS and len(set(assigned)) == DESKTOPS
        assert queued == list(range(1, USERS - DESKTOPS + 1))
        # The engine's leases and jobs went through PgBouncer too: the pool's provisioning
        # job ran again and again, each run leased, done and recorded.
        with TestClient(create_app(ctx)) as client:
            admin = Api(client, ctx, admin.token)
            wait_until(
                lambda: any(j["runs"] >= 3 for j in admin.get("jobs")["items"]),
                "the engine's jobs to run through PgBouncer",
                timeout_s=60,
            )
    finally:
        engine.stop()
        ctx.db.dispose()
