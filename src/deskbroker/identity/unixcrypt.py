"""crypt(3) password hashes, verified by the system's libxcrypt (``libcrypt.so.1``).

Why libxcrypt through ctypes rather than a PyPI package: Python's ``crypt`` module is
deprecated (gone in 3.13) and only ever wrapped this same library; passlib and its forks
have no yescrypt, which Debian writes by default since 11; libxcrypt is the library
``login``, PAM and ``passwd`` themselves use, so every hash Debian writes (yescrypt,
sha512-crypt, sha256-crypt, md5-crypt, bcrypt, even DES) verifies exactly as it does at
the console. ``crypt_rn`` is thread-safe (the caller gives the scratch area) and
returns NULL instead of a magic string on a bad setting; ctypes releases the GIL
during the call, so logins hashing in parallel threads do not stall the broker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
from functools import cache

_DATA_SIZE = 32768  # sizeof(struct crypt_data)
_GENSALT_SIZE = 192  # CRYPT_GENSALT_OUTPUT_SIZE


class CryptUnavailable(RuntimeError):
    """libxcrypt (Debian's libcrypt1) is not installed."""


@cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise CryptUnavailable(f"cannot load {name}: {exc}") from exc
    lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    lib.crypt_rn.restype = ctypes.c_char_p
    lib.crypt_gensalt_rn.argtypes = [
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
    ]
    lib.crypt_gensalt_rn.restype = ctypes.c_char_p
    return lib


def crypt(password: str, setting: str) -> str | None:
    """``password`` hashed with ``setting`` (a hash or salt); None if the setting is unusable."""
    data = ctypes.create_string_buffer(_DATA_SIZE)
    phrase, salt = password.encode(), setting.encode("ascii", "replace")
    # c_char_p copies the result out of the scratch area before it is wiped.
    out: bytes | None = _library().crypt_rn(phrase, salt, data, _DATA_SIZE)
    ctypes.memset(data, 0, _DATA_SIZE)  # the scratch area saw the password
    return None if out is None else out.decode("ascii", "replace")


def gensalt(prefix: str | None = None) -> str:
    """A fresh setting for ``prefix`` (``$y$``, ``$6$``, ...); the library's default if None."""
    out = ctypes.create_string_buffer(_GENSALT_SIZE)
    made: bytes | None = _library().crypt_gensalt_rn(
        None if prefix is None else prefix.encode(), 0, None, 0, out, _GENSALT_SIZE
    )
    if made is None:
        raise ValueError(f"libxcrypt cannot make a setting for {prefix!r}")
    return made.decode("ascii")


def hash_password(password: str, prefix: str | None = None) -> str:
    hashed = crypt(password, gensalt(prefix))
    if hashed is None:
        raise ValueError(f"libxcrypt cannot hash with {prefix!r}")
    return hashed


def verify(password: str, hashed: str) -> bool:
    """Whether ``password`` hashes to ``hashed``, compared in constant time."""
    computed = crypt(password, hashed)
    if computed is None:
        return False
    return hmac.compare_digest(computed.encode(), hashed.encode())
