"""Password hashes: scrypt hashing, parsing and checking of the stored hash format.

Stored hash format (one string, ``$``-separated, base64 with padding)::

    scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>      e.g. scrypt$16384$8$1$...$...

A leaf module (standard library only): config.py checks ``[[users]]`` hashes with it while
loading, and auth.py and users.py build on it, so neither needs the other to read a hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Final, NamedTuple

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_SALT_BYTES: Final = 16
SCRYPT_KEY_BYTES: Final = 32
# Bounds for hashes read from a config file, so a typo cannot ask for gigabytes of memory.
SCRYPT_MAX_N: Final = 2**20
SCRYPT_MAX_R: Final = 32
SCRYPT_MAX_P: Final = 16


class ScryptParams(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, n: int, r: int, p: int, salt: bytes, dklen: int) -> bytes:
    # OpenSSL needs 128*r*(n+p+2) bytes; give it that plus slack instead of its 32 MiB cap.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen
    )


def hash_password(password: str) -> str:
    """Hash ``password`` for a ``[[users]]`` entry (random salt, default scrypt cost)."""
    salt = os.urandom(SCRYPT_SALT_BYTES)
    key = _scrypt(password, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, SCRYPT_KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def parse_password_hash(stored: str) -> ScryptParams:
    """Split a stored hash into its parts; ``ValueError`` says what is wrong with it."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("password hash must look like scrypt$<n>$<r>$<p>$<salt>$<hash>")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("password hash has a non-numeric cost or bad base64") from None
    if n < 2 or n > SCRYPT_MAX_N or n & (n - 1):
        raise ValueError(f"scrypt n must be a power of two between 2 and {SCRYPT_MAX_N}")
    if not 1 <= r <= SCRYPT_MAX_R or not 1 <= p <= SCRYPT_MAX_P:
        raise ValueError(f"scrypt r must be 1..{SCRYPT_MAX_R} and p 1..{SCRYPT_MAX_P}")
    if not salt or not key:
        raise ValueError("password hash has an empty salt or key")
    return ScryptParams(n, r, p, salt, key)


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed ``stored`` never matches."""
    try:
        params = parse_password_hash(stored)
    except ValueError:
        return False
    key = _scrypt(password, params.n, params.r, params.p, params.salt, len(params.key))
    return hmac.compare_digest(key, params.key)


def burn_scrypt(password: str) -> bool:
    """Do the work of a real check for an unknown user so timing does not reveal names."""
    _scrypt(password, SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * SCRYPT_SALT_BYTES, SCRYPT_KEY_BYTES)
    return False
