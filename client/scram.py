"""Choosing an auth mechanism, and the client side of SCRAM-SHA-256 (with ``scramp``).

The SDK logs in with SCRAM-SHA-256 when the broker offers it (the password never crosses
the wire, and the broker proves with its final message that it holds the user's
credential: a broker that does not is refused), PLAIN when that is all it offers, and
EXTERNAL (the TLS client certificate) when there is no password and the broker offers it.
``auth_mechanism=`` (or ``?auth_mechanism=`` in the URL) forces one.
"""

from __future__ import annotations

from typing import Final

import scramp

from wharf.protocol.errors import AccessRefused

SCRAM: Final = "SCRAM-SHA-256"
PLAIN: Final = "PLAIN"
EXTERNAL: Final = "EXTERNAL"
MECHANISMS: Final = (SCRAM, PLAIN, EXTERNAL)
# The broker's words for a refused password or proof (it says no more, on purpose).
INVALID_CREDENTIALS: Final = "invalid credentials"

# What a user whose password predates SCRAM on the broker must do (docs/security.md).
SCRAM_UPGRADE_HINT: Final = (
    "if this user's password was stored before the broker supported SCRAM-SHA-256, log "
    "in once with PLAIN over TLS (wharfs://) or from loopback, or set the password again"
)


# details key of the AccessRefused raised when the broker refused a SCRAM proof: a wrong
# password, no such user, or a user with no SCRAM credential yet (it does not say which).
# The value says whether the broker offered PLAIN on that connection.
PROOF_REFUSED_PLAIN_OFFERED: Final = "scram_proof_refused_plain_offered"


def choose_mechanism(offered: list[str], forced: str | None, password: str) -> str:
    """The mechanism to log in with; AccessRefused says why none fits."""
    if forced is not None:
        if forced in offered:
            return forced
        if forced == PLAIN:
            raise AccessRefused(
                "the broker does not accept PLAIN on this connection: it has no TLS and is "
                "not from loopback, so the password would cross the network in clear; use "
                "SCRAM-SHA-256 (the default), a wharfs:// URL, or ask for "
                f"allow_plain_without_tls on the broker (it offers {offered})"
            )
        if forced == EXTERNAL:
            raise AccessRefused(
                "the broker offers no EXTERNAL login on this connection: it needs a "
                "wharfs:// connection with a client certificate (certfile, keyfile) that "
                f"the broker verifies, and tls_cert_login set on the broker (it offers {offered})"
            )
        raise AccessRefused(f"the broker does not offer {forced}; it offers {offered}")
    if not password and EXTERNAL in offered:
        return EXTERNAL
    for mechanism in (SCRAM, PLAIN):
        if mechanism in offered:
            return mechanism
    raise AccessRefused(f"the broker offers auth mechanisms {offered}; the SDK speaks {MECHANISMS}")


class ScramLogin:
    """One client-side SCRAM-SHA-256 exchange."""

    __slots__ = ("_client",)

    def __init__(self, username: str, password: str) -> None:
        self._client = scramp.ScramClient([SCRAM], username, password)

    def client_first(self) -> str:
        first: str = self._client.get_client_first()
        return first

    def client_final(self, server_first: str) -> str:
        """The client-final message (PBKDF2 of the password: a few ms of CPU)."""
        try:
            self._client.set_server_first(server_first)
            final: str = self._client.get_client_final()
        except Exception as exc:  # scramp raises several kinds on bad input
            raise AccessRefused(f"SCRAM-SHA-256 login failed: {exc}") from None
        return final

    def check_server_final(self, server_final: str | None) -> None:
        """Refuse a broker that cannot prove it holds the user's SCRAM credential."""
        try:
            self._client.set_server_final(server_final or "")
        except Exception:
            raise AccessRefused(
                "the broker's SCRAM-SHA-256 signature is wrong: it does not hold this user's "
                "credential, so it may not be the broker you meant; the connection is closed"
            ) from None
