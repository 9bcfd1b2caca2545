"""Who a client is, in the words every login module shares: the ``User`` a login ends
with, the built-in user's name, the mechanism labels, the refusal a check raises, and
how a peer address is keyed.

A leaf module (standard library only), below the modules that build on it: auth.py (the
authenticator), scram.py (one SCRAM exchange) and users.py (the user store) all take
these names from here, so none of them needs another just for a name or a type.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

DEFAULT_USER: Final = "guest"

# Mechanism labels (wharf_auth_failures_total{mechanism}, audit "mechanism").
MECHANISM_SCRAM: Final = "SCRAM-SHA-256"
MECHANISM_PLAIN: Final = "PLAIN"
MECHANISM_EXTERNAL: Final = "EXTERNAL"
MECHANISM_HTTP_BASIC: Final = "BASIC"
MECHANISM_HTTP_LOGIN: Final = "LOGIN"  # the web UI's login form (POST /api/auth/login)
MECHANISM_OTHER: Final = "other"  # a mechanism the broker does not offer

INVALID_CREDENTIALS: Final = "invalid credentials"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    tags: tuple[str, ...] = ()


class RefusedLogin(Exception):
    """A check's refusal whose client is told less than the log and audit say (e.g. that
    the user exists but has no SCRAM credential yet); the caller gets AccessRefused(told)."""

    def __init__(self, told: str, logged_reason: str) -> None:
        super().__init__(logged_reason)
        self.told = told
        self.logged_reason = logged_reason


def is_loopback(peer_host: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x are loopback; anything unparsable is not."""
    try:
        addr = ipaddress.ip_address(peer_host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def host_key(peer_host: str) -> str:
    """Normalise so that ::ffff:10.0.0.1 and 10.0.0.1 share one failure record."""
    try:
        addr = ipaddress.ip_address(peer_host)
    except ValueError:
        return peer_host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
