"""One SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) on the broker's side, with ``scramp``.

Protocol-neutral: a wire adapter passes the client's messages in and sends the answers
back in whatever frames its protocol has (native: AUTH, AUTH_CHALLENGE, AUTH_RESPONSE,
AUTH_OK; AMQP: connection.secure / secure-ok)::

    client-first  "n,,n=app,r=<client nonce>"          -> server_first()
    server-first  "r=<nonce>,s=<salt>,i=4096"          <-
    client-final  "c=biws,r=<nonce>,p=<proof>"         -> server_final()
    server-final  "v=<server signature>"               <-  (with the login's success)

The first step needs no turn: it reads the user's salt and iteration count (a stand-in
for names that are no user, auth.py ``scram_credential``).  The proof is checked in the
login throttle's turn of (user, address), like a PLAIN password, and a wrong one costs a
scrypt before it is refused.  Channel binding (``-PLUS``) is not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

import scramp

from wharf.protocol.errors import AccessRefused, WharfError

from .identity import INVALID_CREDENTIALS, MECHANISM_SCRAM, RefusedLogin, User, host_key

if TYPE_CHECKING:
    from .passwords import ScramCredential
    from .users import StoredUser, UserStore

log = logging.getLogger(__name__)

# Longest SCRAM message accepted (names, nonces, a base64 proof fit in far less).
MAX_SCRAM_MESSAGE_CHARS: Final = 4_096
NO_SCRAM_CREDENTIAL: Final = (
    "user has no SCRAM-SHA-256 credential yet: it gets one at its next PLAIN login "
    "(over TLS or from loopback), or when its password is set again"
)


class ScramAuthority(Protocol):
    """What an exchange uses of the authenticator (auth.py ``Authenticator``, which
    makes the exchanges): credentials, the login throttle, failure records."""

    @property
    def users(self) -> UserStore: ...

    def scram_credential(self, username: str) -> tuple[ScramCredential, StoredUser | None]: ...

    def note_failure(
        self,
        username: str,
        where: str,
        mechanism: str,
        protocol: str,
        reason: str,
        *,
        pair: tuple[str, str] | None,
    ) -> None: ...

    async def burn_check(self) -> None: ...

    def check_loopback(self, username: str, peer_host: str) -> None: ...

    async def throttled(
        self,
        username: str,
        peer_host: str,
        check: Callable[[], Awaitable[User]],
        *,
        mechanism: str,
        protocol: str,
        peer: str | None,
    ) -> User: ...


class ScramConversation:
    """Server side of one exchange; call ``server_first`` then ``server_final`` once each."""

    __slots__ = (
        "_auth",
        "_peer_host",
        "_protocol",
        "_where",
        "_server",
        "_account",
        "_final",
        "username",
    )

    def __init__(self, authenticator: ScramAuthority, peer_host: str, protocol: str, where: str):
        self._auth = authenticator
        self._peer_host = peer_host
        self._protocol = protocol
        self._where = where
        self._server: scramp.ScramServer | None = None
        self._account: StoredUser | None = None
        self._final = ""
        self.username = ""  # from the client-first message

    def _lookup(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self.username = username
        credential: ScramCredential
        credential, self._account = self._auth.scram_credential(username)
        return credential.salt, credential.stored_key, credential.server_key, credential.iterations

    def _refuse(self, reason: str) -> WharfError:
        """Record a refusal made before any proof was checked (a malformed exchange);
        its log lines are rate-limited per (user, address) like a wrong password's."""
        pair = (self.username, host_key(self._peer_host))
        self._auth.note_failure(
            self.username, self._where, MECHANISM_SCRAM, self._protocol, reason, pair=pair
        )
        return AccessRefused(reason)

    def server_first(self, client_first: str) -> str:
        """The server-first message for ``client_first``; AccessRefused if malformed."""
        if self._server is not None:
            raise self._refuse("a second SCRAM client-first message")
        if len(client_first) > MAX_SCRAM_MESSAGE_CHARS:
            raise self._refuse("SCRAM client-first message too long")
        server = scramp.ScramMechanism(MECHANISM_SCRAM).make_server(self._lookup)
        self._server = server
        try:
            server.set_client_first(client_first)
            first: str = server.get_server_first()
        except Exception as exc:  # hostile input: scramp raises several kinds
            raise self._refuse(f"malformed SCRAM client-first message ({exc})") from None
        return first

    async def server_final(self, client_final: str) -> tuple[User, str]:
        """Check the client's proof in the login throttle's turn: the user and the
        server-final message (which proves the broker holds the credential), or
        AccessRefused."""
        server = self._server
        if server is None or len(client_final) > MAX_SCRAM_MESSAGE_CHARS:
            raise self._refuse("SCRAM client-final message out of turn or too long")
        auth = self._auth

        async def check() -> User:
            account = self._account
            try:
                server.set_client_final(client_final)
                final: str = server.get_server_final()
            except Exception as exc:  # a wrong proof or hostile input
                await auth.burn_check()  # a refusal costs what a PLAIN one does
                known = account is not None or self.username not in auth.users
                reason = INVALID_CREDENTIALS if known else NO_SCRAM_CREDENTIAL
                log.debug("SCRAM proof refused for %r: %s", self.username, exc)
                # The client is told the same either way: the exchange must not reveal
                # which names are users.
                raise RefusedLogin(INVALID_CREDENTIALS, reason) from None
            assert account is not None  # a stand-in credential matches no proof
            self._final = final
            auth.check_loopback(self.username, self._peer_host)
            return account.user

        user = await auth.throttled(
            self.username,
            self._peer_host,
            check,
            mechanism=MECHANISM_SCRAM,
            protocol=self._protocol,
            peer=self._where,
        )
        return user, self._final
