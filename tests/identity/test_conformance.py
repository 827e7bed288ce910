"""The identity seam's contract, checked the same way against every first-party source.

Each source runs against its real server: local users (the broker's own hashes), LDAP
(slapd), Active Directory (Samba AD), NIS (ypserv) and OpenID Connect (node-oidc-provider).
A source that signs users in at a provider has no password to check: its right, wrong and
unknown cases go through the provider's flow instead (a real sign-in, a token issued to
another client, a made-up code). A new source adds one ``Case`` below.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deskbroker.domain.accounts import UserRecord
from deskbroker.domain.rules import Identity
from deskbroker.errors import (
    BadRequest,
    DeskbrokerError,
    DirectoryUnavailable,
    IdentityProviderUnavailable,
    Unauthorized,
)
from deskbroker.identity.base import (
    Credentials,
    IdentitySourceDriver,
    SourceCapability,
    SourceContractError,
    contract_faults,
    provider_sign_in,
    source_kinds,
)
from deskbroker.identity.sign_in import ProviderSignIn, TokenSet
from deskbroker.security import PasswordHashing
from deskbroker.write_guard import HeldTransaction, write_unit
from tests.identity.directories import (
    AD_SERVICE_PASSWORD,
    LDAP_SERVICE_PASSWORD,
    SambaDc,
    Slapd,
)
from tests.identity.nis_server import NisSite
from tests.identity.nis_users import nis_params
from tests.identity.sources import ad_params, ldap_params
from tests.oidc.browser import Browser
from tests.oidc.flows import oidc_params, query_of
from tests.oidc.provider import (
    ACCOUNTS,
    BROKER_CALLBACK,
    CLIENT_SECRET,
    OTHER_CLIENT,
    OidcProvider,
)
from tests.tarpit import tarpit

HASHING = PasswordHashing(1, 64, 1)
# The per-call timeout a remote source is given against a server that never answers.
TIMEOUT_S = 1.0
PASSWORD = {SourceCapability.PASSWORD}
PROVIDER = {SourceCapability.BROWSER_SIGN_IN, SourceCapability.DEVICE_SIGN_IN}


@dataclass
class Case:
    """One source kind: how to open it on its real server, and what it must answer."""

    kind: str
    capabilities: set[SourceCapability]
    provisions_users: bool
    open: Callable[[], IdentitySourceDriver]
    # Opens the source against a server at 127.0.0.1:port that accepts and never answers;
    # None for a source that reaches nothing.
    open_silent: Callable[[int], IdentitySourceDriver] | None
    user: str
    password: str
    groups: set[str]
    attributes: dict[str, str]
    # The TCP port of the source's server (its connections are counted), if any.
    port: int | None = None
    # Whether the source keeps connections open between calls (a pool, HTTP keep-alive).
    keeps_connections: bool = True
    known: UserRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _record(username: str, password: str) -> UserRecord:
    """The broker's own row of a local user, as the store hands it to a source."""
    return UserRecord(
        id="u1",
        tenant_id="t1",
        identity_source_id="s1",
        username=username,
        display_name="Lou Local",
        password_hash=HASHING.hash(password),
        role="user",
        groups=["staff", "lab"],
        attributes={"room": "12"},
        disabled=False,
        config_version=1,
        queued=0,
    )


def _open(kind: str, params: dict[str, Any], secrets: dict[str, str] | None = None) -> Any:
    return source_kinds()[kind](params, secrets or {}, HASHING)


def _local(request: pytest.FixtureRequest) -> Case:
    known = _record("lou", "lou-password-1")
    return Case(
        "local", PASSWORD, False, lambda: _open("local", {}), None,
        "lou", "lou-password-1", {"staff", "lab"}, {"room": "12"}, known=known,
    )  # fmt: skip


def _ldap(request: pytest.FixtureRequest) -> Case:
    slapd: Slapd = request.getfixturevalue("slapd")
    secrets = {"bind_password": LDAP_SERVICE_PASSWORD}
    return Case(
        "ldap", PASSWORD, True,
        lambda: _open("ldap", ldap_params(slapd), secrets),
        lambda port: _open(
            "ldap",
            ldap_params(
                slapd, servers=[f"ldap://127.0.0.1:{port}"],
                timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S,
            ),
            secrets,
        ),
        "ann", "ann-password-1",
        {"devs", "cn=devs,ou=groups,dc=example,dc=org"}, {"departmentNumber": "R&D"},
        port=int(slapd.url.rsplit(":", 1)[1]),
    )  # fmt: skip


def _ad(request: pytest.FixtureRequest) -> Case:
    dc: SambaDc = request.getfixturevalue("samba_dc")
    secrets = {"bind_password": AD_SERVICE_PASSWORD}
    return Case(
        "activedirectory", PASSWORD, True,
        lambda: _open("activedirectory", ad_params(dc), secrets),
        lambda port: _open(
            "activedirectory",
            ad_params(
                dc, servers=[f"ldap://127.0.0.1:{port}"],
                timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S,
            ),
            secrets,
        ),
        "alice", "Alice-Passw0rd!",
        # VDI-Users holds alice only through Engineers: nested groups are the contract.
        {"Engineers", "VDI-Users"}, {"department": "Engineering"},
        port=636,
    )  # fmt: skip


def _nis(request: pytest.FixtureRequest) -> Case:
    site: NisSite = request.getfixturevalue("nis")
    return Case(
        "nis", PASSWORD, True,
        lambda: _open("nis", nis_params(site)),
        lambda port: _open(
            "nis",
            nis_params(
                site, servers=[f"127.0.0.1:{port}"],
                timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S,
            ),
        ),
        "ann", "ann-password-1", {"devs", "staff"}, {"uid": "2001", "gid": "100"},
        port=site.port, keeps_connections=False,
    )  # fmt: skip


def _oidc(request: pytest.FixtureRequest) -> Case:
    provider: OidcProvider = request.getfixturevalue("oidc_provider")
    claims = ACCOUNTS["ann"]["claims"]
    secrets = {"client_secret": CLIENT_SECRET}
    return Case(
        "oidc", PROVIDER, True,
        lambda: _open("oidc", oidc_params(provider), secrets),
        lambda port: _open(
            "oidc",
            {**oidc_params(provider), "issuer": f"http://127.0.0.1:{port}", "timeout_s": TIMEOUT_S},
            secrets,
        ),
        "ann", ACCOUNTS["ann"]["password"], set(claims["groups"]), {"sub": "ann"},
        port=int(provider.issuer.rsplit(":", 1)[1].split("/")[0]),
        extra={"provider": provider},
    )  # fmt: skip


CASES = {
    "local": _local,
    "ldap": _ldap,
    "activedirectory": _ad,
    "nis": _nis,
    "oidc": _oidc,
}


def test_every_installed_source_has_a_case() -> None:
    assert set(source_kinds()) == set(CASES), "a new source kind needs its Case here"


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param](request)


@pytest.fixture
def source(case: Case) -> Iterator[IdentitySourceDriver]:
    driver = case.open()
    yield driver
    driver.close()


# --- sign-in through the provider, for sources without passwords ------------------------
def _provider_tokens(case: Case, signer: ProviderSignIn, nonce: str) -> TokenSet:
    """A real sign-in at the provider: the user's browser signs in and comes back with a
    code, which the source exchanges."""
    verifier = "v" * 50
    from deskbroker.services.oidc_signin import _challenge

    url = signer.authorization_url(
        state="s" * 20,
        nonce=nonce,
        code_challenge=_challenge(verifier),
        redirect_uri=BROKER_CALLBACK,
    )
    browser = Browser()
    try:
        visit = browser.sign_in(url, case.user, case.password)
    finally:
        browser.close()
    assert visit.callback is not None, "the provider did not send the browser back"
    return signer.exchange_code(
        code=query_of(visit.callback)["code"], code_verifier=verifier, redirect_uri=BROKER_CALLBACK
    )


def _sign_in(case: Case, driver: IdentitySourceDriver) -> Identity | None:
    """The user signed in the source's way, with the right secret."""
    if SourceCapability.PASSWORD in case.capabilities:
        return driver.authenticate(Credentials(case.user, case.password), case.known)
    signer = provider_sign_in(driver, SourceCapability.BROWSER_SIGN_IN)
    assert signer is not None
    return signer.sign_in(_provider_tokens(case, signer, "the-nonce"), "the-nonce").identity


# --- the contract ------------------------------------------------------------------------
def test_declares_its_capabilities_and_loads(case: Case, source: IdentitySourceDriver) -> None:
    cls = type(source)
    assert source_kinds()[case.kind] is cls and cls.kind == case.kind
    assert contract_faults(cls) == []
    assert set(cls.capabilities) == case.capabilities
    assert cls.provisions_users is case.provisions_users
    assert cls.accepts_passwords is (SourceCapability.PASSWORD in case.capabilities)
    for capability in (SourceCapability.BROWSER_SIGN_IN, SourceCapability.DEVICE_SIGN_IN):
        signer = provider_sign_in(source, capability)
        assert (signer is not None) is (capability in case.capabilities)


def test_the_right_secret_gives_the_identity_with_groups_and_attributes(
    case: Case, source: IdentitySourceDriver
) -> None:
    who = _sign_in(case, source)
    assert who is not None
    assert who.username == case.user
    assert who.groups >= case.groups, who.groups
    assert {k: who.attributes.get(k) for k in case.attributes} == case.attributes


def test_a_wrong_secret_is_refused(case: Case, source: IdentitySourceDriver) -> None:
    if SourceCapability.PASSWORD in case.capabilities:
        assert source.authenticate(Credentials(case.user, "not-the-password"), case.known) is None
        assert source.authenticate(Credentials(case.user, ""), case.known) is None
        return
    # No password is taken at all, in words that say where to sign in.
    with pytest.raises(BadRequest, match="OpenID provider"):
        source.authenticate(Credentials(case.user, case.password), None)
    # A real token the provider issued to another client is not this user's sign-in.
    provider: OidcProvider = case.extra["provider"]
    other = _open(
        "oidc",
        oidc_params(provider, client_id=OTHER_CLIENT),
        {"client_secret": "other-app-secret-0123456789abcdef"},
    )
    try:
        signer = provider_sign_in(other, SourceCapability.BROWSER_SIGN_IN)
        assert signer is not None
        tokens = _provider_tokens(case, signer, "the-nonce")
    finally:
        other.close()
    mine = provider_sign_in(source, SourceCapability.BROWSER_SIGN_IN)
    assert mine is not None
    with pytest.raises(Unauthorized, match="another client"):
        mine.sign_in(tokens, "the-nonce")


def test_an_unknown_user_is_refused_like_a_wrong_secret(
    case: Case, source: IdentitySourceDriver
) -> None:
    if SourceCapability.PASSWORD in case.capabilities:
        assert source.authenticate(Credentials("nobody-here", case.password), None) is None
        assert source.lookup("nobody-here", None) is None
        return
    signer = provider_sign_in(source, SourceCapability.BROWSER_SIGN_IN)
    assert signer is not None
    with pytest.raises(BadRequest, match="did not accept the sign-in's code"):
        signer.exchange_code(code="made-up", code_verifier="v" * 50, redirect_uri=BROKER_CALLBACK)


def test_lookup_describes_the_user_without_a_secret(
    case: Case, source: IdentitySourceDriver
) -> None:
    if SourceCapability.PASSWORD in case.capabilities:
        who = source.lookup(case.user, case.known)
        assert who is not None and who.username == case.user and who.groups >= case.groups
        return
    # A provider's users are known to the broker by the row their sign-in made.
    known = _record(case.user, "unused-password-1")
    who = source.lookup(case.user, known)
    assert who is not None and who.username == case.user and who.groups == set(known.groups)


def _connections_to(port: int) -> int:
    """Established TCP connections of this process to ``port`` on 127.0.0.1."""
    mine: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in mine:
                count += 1
    return count


def test_close_lets_go_of_every_connection(case: Case) -> None:
    # Connections the fixtures left for the garbage collector are not the source's.
    gc.collect()
    before = 0 if case.port is None else _connections_to(case.port)
    driver = case.open()
    assert _sign_in(case, driver) is not None
    if case.port is not None and case.keeps_connections:
        # Pooled between calls, so the check below has something to let go of.
        assert _connections_to(case.port) > before
    driver.close()
    driver.close()  # twice is harmless: a newer configuration may race an eviction
    if case.port is not None:
        assert _connections_to(case.port) <= before


def test_deadlines_are_honoured_against_a_server_that_never_answers(case: Case) -> None:
    if case.open_silent is None:
        # A source that reaches nothing says so: its calls may run anywhere.
        cls = source_kinds()[case.kind]
        assert {"authenticate", "lookup"} <= cls.offline
        driver = case.open()
        with write_unit():
            started = time.perf_counter()
            assert driver.authenticate(Credentials(case.user, case.password), case.known)
        assert time.perf_counter() - started < 2.0
        return
    with tarpit() as pit:
        driver = case.open_silent(pit.port)
        try:
            # Inside a database write unit the call does not even start.
            with write_unit(), pytest.raises(HeldTransaction):
                _first_call(case, driver)
            assert pit.accepted == 0
            started = time.perf_counter()
            with pytest.raises((DirectoryUnavailable, IdentityProviderUnavailable)) as caught:
                _first_call(case, driver)
            took = time.perf_counter() - started
        finally:
            driver.close()
    assert isinstance(caught.value, DeskbrokerError) and caught.value.status == 503
    # It waited for the server (the timeout), then gave up: within a few timeouts (a
    # source may try the service bind and the user bind), however long the server hangs.
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S * 4 + 1.0, took


def _first_call(case: Case, driver: IdentitySourceDriver) -> object:
    """The first call a sign-in makes to the source's server."""
    if SourceCapability.PASSWORD in case.capabilities:
        return driver.authenticate(Credentials(case.user, case.password), None)
    signer = provider_sign_in(driver, SourceCapability.BROWSER_SIGN_IN)
    assert signer is not None
    return signer.authorization_url(
        state="s" * 20, nonce="n" * 20, code_challenge="c" * 43, redirect_uri=BROKER_CALLBACK
    )


# --- the registry's check --------------------------------------------------------------
class _Faulty(IdentitySourceDriver):
    kind = "faulty"
    capabilities = frozenset({SourceCapability.PASSWORD, SourceCapability.DEVICE_SIGN_IN})


class _HalfProvider(IdentitySourceDriver, ProviderSignIn):
    kind = "half"
    capabilities = frozenset({SourceCapability.BROWSER_SIGN_IN})

    def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        return "https://idp.example.org/authorize"


def test_a_source_breaking_its_declaration_is_refused_at_load_time() -> None:
    faults = contract_faults(_Faulty)
    assert "it has no Params model" in faults
    assert "it declares password but does not implement authenticate()" in faults
    assert "it declares device_sign_in but is no ProviderSignIn" in faults
    half = contract_faults(_HalfProvider)
    assert "it declares browser_sign_in but does not implement exchange_code" in half
    assert "it declares browser_sign_in but does not implement issuer" in half
    assert "it declares browser_sign_in but does not implement sign_in" in half
    assert not _HalfProvider.accepts_passwords


def test_the_registry_refuses_to_load_a_faulty_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party source installed as a distribution: the broker does not start with
    it, and says which entry point and what is missing."""
    dist = tmp_path / "acme_sources-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-sources\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[deskbroker.identity]\nradius = acme_radius:Radius\n")
    (tmp_path / "acme_radius.py").write_text(
        "from deskbroker.identity.base import IdentitySourceDriver\n"
        "from pydantic import BaseModel\n\n"
        "class Radius(IdentitySourceDriver):\n"
        "    kind = 'radius'\n"
        "    Params = BaseModel\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source_kinds.cache_clear()
    try:
        with pytest.raises(SourceContractError) as refused:
            source_kinds()
        assert str(refused.value) == (
            "identity source 'radius' (acme_radius:Radius) cannot be loaded: "
            "it declares password but does not implement authenticate()"
        )
    finally:
        source_kinds.cache_clear()
