"""The broker's secret key (strength, rotation) and who may read its data directory."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deskbroker.api.app import create_app
from deskbroker.bootstrap import add_local_user, ensure_defaults
from deskbroker.config import Settings
from deskbroker.errors import Unauthorized
from deskbroker.services.context import BrokerContext
from tests.helpers import Api

OLD_KEY = secrets.token_urlsafe(48)
NEW_KEY = secrets.token_urlsafe(48)


def _config_version(ctx: BrokerContext) -> int:
    from deskbroker.store.tables import BrokerState

    with ctx.db.read() as session:
        state = session.get(BrokerState, 1)
        assert state is not None
        return state.config_version


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, which leaves new files readable by everyone."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("secret", "too weak"),
        ("changeme-changeme-changeme-changeme", "too weak"),  # few distinct characters
        ("a" * 64, "too weak"),
    ],
)
def test_a_weak_secret_key_is_refused_with_a_clear_message(
    tmp_path: Path, key: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        Settings(data_dir=tmp_path, secret_key=key)
    assert "DESKBROKER_SECRET_KEY" in str(refused.value)
    assert "secrets.token_urlsafe" in str(refused.value)
    with pytest.raises(ValueError, match="DESKBROKER_SECRET_KEY_PREVIOUS"):
        Settings(data_dir=tmp_path, secret_key=NEW_KEY, secret_key_previous=key)


def test_a_weak_key_file_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("secret.key").write_text("hunter2\n")
    with pytest.raises(ValueError, match="too weak"):
        _ = Settings(data_dir=tmp_path).effective_secret_key


def test_the_data_directory_and_its_files_are_the_brokers_alone(
    tmp_path: Path, umask_022: None
) -> None:
    data = tmp_path / "data"
    ctx = BrokerContext.from_settings(Settings(data_dir=data))
    try:
        ensure_defaults(ctx)
    finally:
        ctx.db.dispose()
    assert _mode(data) == 0o700
    assert _mode(data / "secret.key") == 0o600
    assert _mode(data / "deskbroker.db") == 0o600
    # A directory and files left open by an older broker are closed on the next start.
    data.chmod(0o755)
    (data / "secret.key").chmod(0o644)
    (data / "deskbroker.db").chmod(0o644)
    ctx = BrokerContext.from_settings(Settings(data_dir=data))
    ctx.db.dispose()
    assert _mode(data) == 0o700
    assert _mode(data / "secret.key") == 0o600
    assert _mode(data / "deskbroker.db") == 0o600


def _broker(settings: Settings, key: str, previous: str = "") -> BrokerContext:
    values = settings.model_dump()
    values.update(secret_key=key, secret_key_previous=previous)
    return BrokerContext.from_settings(Settings(**values))


def test_a_key_rotation_keeps_tokens_and_sealed_secrets_working(settings: Settings) -> None:
    old = _broker(settings, OLD_KEY)
    ensure_defaults(old)
    add_local_user(old, "admin", "admin-password-1", role="global_admin")
    sealed = old.secrets.seal(json.dumps({"password": "cloud-password"}))
    with TestClient(create_app(old)) as client:
        login = client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": "admin-password-1"}
        )
        old_token = login.json()["token"]
    rotating = _broker(settings, NEW_KEY, previous=OLD_KEY)
    rotated = _broker(settings, NEW_KEY)
    try:
        # During the window: the old token still works, the old secret still opens.
        with TestClient(create_app(rotating)) as client:
            me = client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {old_token}"})
            assert me.status_code == 200, me.text
            assert json.loads(rotating.secrets.open(sealed))["password"] == "cloud-password"
            fresh = client.post(
                "/api/v1/auth/login", json={"username": "admin", "password": "admin-password-1"}
            ).json()["token"]
            resealed = rotating.secrets.reseal(sealed)
        # After it: only what the new key signed or sealed.
        with TestClient(create_app(rotated)) as client:
            gone = client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {old_token}"})
            assert gone.status_code == 401
            kept = client.get("/api/v1/client/me", headers={"Authorization": f"Bearer {fresh}"})
            assert kept.status_code == 200, kept.text
        assert json.loads(rotated.secrets.open(resealed))["password"] == "cloud-password"
        with pytest.raises(ValueError, match="cannot be decrypted"):
            rotated.secrets.open(sealed)
        # New tokens are never signed with the old key.
        before_rotation = _broker(settings, OLD_KEY)
        with pytest.raises(Unauthorized):
            before_rotation.signer.verify(fresh)
        before_rotation.db.dispose()
    finally:
        for ctx in (old, rotating, rotated):
            ctx.db.dispose()


def test_the_cli_reseals_every_secret_under_the_new_key(settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deskbroker.cli import app as cli_app
    from deskbroker.store.tables import Center, Webhook

    old = _broker(settings, OLD_KEY)
    ensure_defaults(old)
    add_local_user(old, "admin", "admin-password-1", role="global_admin")
    with TestClient(create_app(old)) as client:
        api = Api.with_admin(client, old)
        center = api.post(
            "centers",
            {
                "name": "static",
                "kind": "static",
                "params": {"machines": []},
                "secrets": {"password": "cloud-password"},
            },
        )
        hook = api.post(
            "webhooks",
            {
                "name": "billing",
                "url": "https://hooks.example.org/x",
                "kinds": ["login"],
                "secret": "webhook-secret-0123456789",
            },
        )
    old.db.dispose()
    common = ["--db", settings.effective_database_url, "--data-dir", str(tmp_path / "cli")]
    # Without the old key nothing opens: nothing is changed, and the message says why.
    refused = CliRunner().invoke(
        cli_app, ["db", "reseal", *common], env={"DESKBROKER_SECRET_KEY": NEW_KEY}
    )
    assert refused.exit_code == 1, refused.output
    assert "DESKBROKER_SECRET_KEY_PREVIOUS" in refused.output
    done = CliRunner().invoke(
        cli_app,
        ["db", "reseal", *common],
        env={"DESKBROKER_SECRET_KEY": NEW_KEY, "DESKBROKER_SECRET_KEY_PREVIOUS": OLD_KEY},
    )
    assert done.exit_code == 0, done.output
    assert "resealed 2 secrets" in done.output
    rotated = _broker(settings, NEW_KEY)
    try:
        with rotated.db.read() as session:
            row = session.get(Center, center["id"])
            assert row is not None and row.secrets_sealed is not None
            assert json.loads(rotated.secrets.open(row.secrets_sealed)) == {
                "password": "cloud-password"
            }
            webhook = session.get(Webhook, hook["id"])
            assert webhook is not None
            assert rotated.secrets.open(webhook.secret_sealed) == "webhook-secret-0123456789"
    finally:
        rotated.db.dispose()


def test_the_cli_refuses_a_weak_key_in_words(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deskbroker.cli import app as cli_app

    weak = CliRunner().invoke(
        cli_app,
        ["db", "upgrade", "--data-dir", str(tmp_path / "data")],
        env={"DESKBROKER_SECRET_KEY": "password123"},
    )
    assert weak.exit_code == 2, weak.output
    assert "DESKBROKER_SECRET_KEY is too weak" in weak.output
    assert "Traceback" not in weak.output


def test_a_redeemed_oidc_hand_off_does_not_stop_a_reseal(settings: Settings) -> None:
    """A redeemed hand-off keeps an empty ``sealed``; the reseal skips it and moves the rest."""
    from sqlalchemy import select

    from deskbroker.services.keys import reseal
    from deskbroker.store import oidc_flows
    from deskbroker.store.tables import IdentitySource, OidcFlow, Tenant

    old = _broker(settings, OLD_KEY)
    ensure_defaults(old)
    with old.db.write() as session:
        tenant_id = session.scalars(select(Tenant.id)).first()
        source_id = session.scalars(select(IdentitySource.id)).first()
        assert tenant_id is not None and source_id is not None
        for key in ("redeemed", "waiting"):
            oidc_flows.create(
                session,
                key=oidc_flows.flow_key(key),
                kind="handoff",
                tenant_id=tenant_id,
                identity_source_id=source_id,
                sealed=old.secrets.seal(json.dumps({"token": key})),
                ttl_s=60,
            )
        assert oidc_flows.redeem(session, oidc_flows.flow_key("redeemed"))
    old.db.dispose()
    rotating = _broker(settings, NEW_KEY, previous=OLD_KEY)
    try:
        before = _config_version(rotating)
        assert reseal(rotating) == 1
        # The other nodes' caches see the resealed values at their next check.
        assert _config_version(rotating) == before + 1
    finally:
        rotating.db.dispose()
    rotated = _broker(settings, NEW_KEY)
    try:
        with rotated.db.read() as session:
            waiting = session.get(OidcFlow, oidc_flows.flow_key("waiting"))
            redeemed = session.get(OidcFlow, oidc_flows.flow_key("redeemed"))
            assert waiting is not None and redeemed is not None
            assert json.loads(rotated.secrets.open(waiting.sealed)) == {"token": "waiting"}
            assert redeemed.sealed == ""
    finally:
        rotated.db.dispose()
