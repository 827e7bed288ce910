"""The NIS source's parts without a server: crypt(3) methods, XDR, map entries, params."""

from __future__ import annotations

from datetime import date

import pytest

from deskbroker.identity import unixcrypt
from deskbroker.identity.nis_entries import parse_group, parse_passwd, parse_shadow
from deskbroker.identity.nis_params import split_server
from deskbroker.identity.oncrpc import Packer, Unpacker, XdrError
from tests.identity.nis_server import mkpasswd


@pytest.mark.parametrize(
    "method",
    ["yescrypt", "sha512crypt", "sha256crypt", "md5crypt", "bcrypt", "descrypt"],
)
def test_hashes_made_elsewhere_verify(method: str) -> None:
    # DES keeps eight characters: a password that differs later would still match.
    password = "Pw-1234" if method == "descrypt" else "correct horse ✓"
    hashed = mkpasswd(password, method)
    assert unixcrypt.verify(password, hashed)
    assert not unixcrypt.verify(password + "x", hashed)
    assert not unixcrypt.verify("", hashed)


@pytest.mark.parametrize("hashed", ["", "*", "!", "x", "$6$", "$y$nonsense", "$99$a$b"])
def test_unusable_hashes_never_verify(hashed: str) -> None:
    assert not unixcrypt.verify("", hashed)
    assert not unixcrypt.verify("anything", hashed)


def test_a_decoy_made_from_a_hash_costs_the_same_method() -> None:
    real = mkpasswd("secret-1", "yescrypt")
    decoy = unixcrypt.crypt("another secret", real)
    assert decoy is not None and decoy.startswith(real[: real.rindex("$") + 1])
    assert decoy != real and not unixcrypt.verify("secret-1", decoy)


def test_xdr_round_trip_and_truncation() -> None:
    data = Packer().uint(7).string("abcde").opaque(b"").uint(0xFFFFFFFE).data()
    assert len(data) == 4 + 4 + 8 + 4 + 4  # "abcde" padded to eight bytes
    u = Unpacker(data)
    assert u.uint() == 7 and u.opaque() == b"abcde" and u.opaque() == b""
    assert u.int32() == -2 and u.done()
    with pytest.raises(XdrError):
        u.uint()
    with pytest.raises(XdrError):
        Unpacker(Packer().uint(1000).data()).opaque()  # says 1000 bytes, has none
    with pytest.raises(XdrError):
        Unpacker(Packer().opaque(b"x" * 64).data(), limit=32).opaque()


def test_map_entries() -> None:
    ann = parse_passwd(b"ann:$y$j9T$s$h:2001:100:Ann Archer,Room 1,,:/home/ann:/bin/bash")
    assert ann is not None and (ann.uid, ann.gid, ann.full_name) == (2001, 100, "Ann Archer")
    assert parse_passwd(b"ann:x:notanumber:100::/:/bin/sh") is None
    assert parse_passwd(b"short:x:1") is None
    assert parse_passwd("jos\xe9:x:1:1:Jos\xe9:/:/bin/sh".encode("latin-1")) is not None
    group = parse_group(b"devs:*:3000:ann, locky,")
    assert group is not None and group.members == {"ann", "locky"}
    assert parse_group(b"empty:*:3001:") is not None
    assert parse_group(b"bad:*:x:ann") is None

    today = date(2026, 1, 1)
    days = (today - date(1970, 1, 1)).days
    fresh = parse_shadow(f"a:h:{days - 10}:0:90:7:::".encode())
    assert fresh is not None and not fresh.password_expired(today)
    assert not fresh.account_expired(today)
    stale = parse_shadow(f"a:h:{days - 100}:0:90:7:::".encode())
    assert stale is not None and stale.password_expired(today)
    must_change = parse_shadow(b"a:h:0:0:99999:7:::")
    assert must_change is not None and must_change.password_expired(today)
    never = parse_shadow(f"a:h:{days - 5000}:0:99999:7:::".encode())
    assert never is not None and not never.password_expired(today)
    expired = parse_shadow(f"a:h:{days}:0:99999:7::{days}:".encode())
    assert expired is not None and expired.account_expired(today)
    assert parse_shadow(b"a:h") is not None


def test_server_specs() -> None:
    assert split_server("nis1") == ("nis1", None)
    assert split_server("nis1.example.org:834") == ("nis1.example.org", 834)
    assert split_server("::1") == ("::1", None)
    assert split_server("[::1]:834") == ("::1", 834)
    for bad in ("nis1:0", "nis1:x", "[::1]x", "", "a b", "nis1:70000"):
        with pytest.raises(ValueError):
            split_server(bad)
