"""EXTERNAL login: which user a verified client certificate names (``tls_cert_login``).

Modelled on RabbitMQ's ``ssl_cert_login_from``.  A leaf module (standard library only):
config.py checks the setting with it, auth.py maps certificates with it.

The certificate is the dict of ``ssl.SSLSocket.getpeercert()`` (``SSLObject`` for
asyncio), which Python fills only once OpenSSL has verified the chain against
``tls_ca_file``: an unverified certificate never reaches this module.
"""

from __future__ import annotations

from typing import Any, Final

CERT_LOGIN_NONE: Final = "none"
CERT_LOGIN_COMMON_NAME: Final = "common_name"
CERT_LOGIN_SAN_DNS: Final = "subject_alt_name_dns"
CERT_LOGIN_SAN_EMAIL: Final = "subject_alt_name_email"
CERT_LOGIN_MODES: Final = (
    CERT_LOGIN_NONE,
    CERT_LOGIN_COMMON_NAME,
    CERT_LOGIN_SAN_DNS,
    CERT_LOGIN_SAN_EMAIL,
)
# subjectAltName entry types, as getpeercert() names them.
_SAN_TYPES: Final = {CERT_LOGIN_SAN_DNS: "DNS", CERT_LOGIN_SAN_EMAIL: "email"}


def user_from_cert(peercert: Any, mode: str) -> str | None:
    """The user name ``peercert`` maps to under ``mode``, or None when it names none.

    ``common_name``: the subject's (last) CN.  ``subject_alt_name_dns`` /
    ``subject_alt_name_email``: the first SAN of that type, as RabbitMQ's default
    ``ssl_cert_login_san_index = 0``.
    """
    if not isinstance(peercert, dict) or mode == CERT_LOGIN_NONE:
        return None
    if mode == CERT_LOGIN_COMMON_NAME:
        found: str | None = None
        for rdn in peercert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and isinstance(value, str):
                    found = value  # the most specific CN is the last one
        return found or None
    san_type = _SAN_TYPES.get(mode)
    if san_type is None:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == san_type and isinstance(value, str) and value:
            return value
    return None
