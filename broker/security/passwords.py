"""Password hashes: scrypt hashing, parsing and checking of the stored hash format, and the
SCRAM-SHA-256 credentials derived from a password.

Stored hash format (one string, ``$``-separated, base64 with padding)::

    scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>      e.g. scrypt$16384$8$1$...$...

SCRAM-SHA-256 credential (RFC 5802/7677; what a SCRAM server stores instead of the
password: a server that only knows these cannot log in as the user elsewhere)::

    SCRAM-SHA-256$<iterations>$<salt b64>$<StoredKey b64>$<ServerKey b64>

SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations),
StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")),
ServerKey = HMAC(SaltedPassword, "Server Key").  It is made from the password, never from
the scrypt hash, so a user whose only credential is a scrypt hash gets one at the next
password login (auth.py: "the upgrade"), or when the password is set again.

A leaf module (standard library only): config.py checks ``[[users]]`` hashes with it while
loading, and auth.py and users.py build on it, so neither needs the other to read a hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Final, NamedTuple

import scramp

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_SALT_BYTES: Final = 16
SCRYPT_KEY_BYTES: Final = 32
# Bounds for hashes read from a config file, so a typo cannot ask for gigabytes of memory.
SCRYPT_MAX_N: Final = 2**20
SCRYPT_MAX_R: Final = 32
SCRYPT_MAX_P: Final = 16


SCRAM_MECHANISM: Final = "SCRAM-SHA-256"
# RFC 7677's minimum and RabbitMQ's and Kafka's default: ~3 ms of PBKDF2 per login on the
# client (the broker only checks HMACs).  Bounds for credentials read from a file.
SCRAM_ITERATIONS: Final = 4096
SCRAM_MIN_ITERATIONS: Final = 4096
SCRAM_MAX_ITERATIONS: Final = 1_000_000
SCRAM_SALT_BYTES: Final = 16
SCRAM_KEY_BYTES: Final = 32
_SCRAM_B64: Final = r"[A-Za-z0-9+/]+={0,2}"
SCRAM_CREDENTIAL_PATTERN: Final = (
    rf"^SCRAM-SHA-256\$[0-9]{{1,7}}\${_SCRAM_B64}\${_SCRAM_B64}\${_SCRAM_B64}$"
)
_SCRAM_CREDENTIAL_RE: Final = re.compile(SCRAM_CREDENTIAL_PATTERN)


class ScramCredential(NamedTuple):
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


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


def make_scram_credential(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 credential for ``password`` (random salt).  ``ValueError`` if
    SASLprep refuses the password (e.g. control characters): such a user keeps PLAIN."""
    mechanism = scramp.ScramMechanism(SCRAM_MECHANISM)
    try:
        salt, stored_key, server_key, i = mechanism.make_auth_info(
            password, iteration_count=iterations, salt=os.urandom(SCRAM_SALT_BYTES)
        )
    except scramp.ScramException as exc:
        raise ValueError(f"no SCRAM credential for this password: {exc}") from None
    return f"{SCRAM_MECHANISM}${i}${_b64(salt)}${_b64(stored_key)}${_b64(server_key)}"


def parse_scram_credential(stored: str) -> ScramCredential:
    """Split a stored SCRAM credential; ``ValueError`` says what is wrong with it."""
    if not _SCRAM_CREDENTIAL_RE.fullmatch(stored):
        raise ValueError(
            "SCRAM credential must look like SCRAM-SHA-256$<iterations>$<salt>$<StoredKey>"
            "$<ServerKey> (`wharf hash-password` prints one)"
        )
    _, i, salt_b64, stored_b64, server_b64 = stored.split("$")
    try:
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_b64, validate=True)
        server_key = base64.b64decode(server_b64, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("SCRAM credential has bad base64") from None
    iterations = int(i)
    if not SCRAM_MIN_ITERATIONS <= iterations <= SCRAM_MAX_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be {SCRAM_MIN_ITERATIONS}..{SCRAM_MAX_ITERATIONS}")
    if not salt or len(stored_key) != SCRAM_KEY_BYTES or len(server_key) != SCRAM_KEY_BYTES:
        raise ValueError(f"SCRAM credential needs a salt and two {SCRAM_KEY_BYTES}-byte keys")
    return ScramCredential(iterations, salt, stored_key, server_key)
