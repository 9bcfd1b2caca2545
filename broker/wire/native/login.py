"""How a native connection logs in: the mechanisms HELLO offers and the AUTH exchange.

``LoginFrames`` is a mixin of ``Connection`` (connection.py).  It decides nothing about
credentials: every mechanism goes to the broker's ``Authenticator`` (security/auth.py),
which the AMQP listener shares.  What it does is carry the mechanism's messages::

    SCRAM-SHA-256   AUTH(client-first) -> AUTH_CHALLENGE(server-first)
                    -> AUTH_RESPONSE(client-final) -> AUTH_OK(server_final = "v=...")
    PLAIN           AUTH(user, password) -> AUTH_OK
    EXTERNAL        AUTH(authzid or "", "") -> AUTH_OK   (the TLS client certificate)

A refusal is a fatal ERROR 403 (AccessRefused); the authenticator logged and audited it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from wharf.protocol import frames as F
from wharf.protocol.errors import AccessRefused, WharfError

from ...security.identity import (
    MECHANISM_EXTERNAL,
    MECHANISM_OTHER,
    MECHANISM_PLAIN,
    MECHANISM_SCRAM,
    User,
)
from .lifecycle import Event, Lifecycle, State

if TYPE_CHECKING:
    from .broker_api import BrokerApi


class LoginFrames:
    """Mixin of ``Connection``: HELLO's mechanisms, AUTH, AUTH_RESPONSE."""

    # Provided by Connection.
    broker: BrokerApi
    transport: asyncio.Transport | None
    peer: str
    peer_host: str
    _lifecycle: Lifecycle
    _loop: asyncio.AbstractEventLoop
    # Set here: the client-final message once AUTH_RESPONSE came, and SCRAM's
    # server-final message for AUTH_OK.
    _login_response: asyncio.Future[str] | None
    login_server_final: str | None

    if TYPE_CHECKING:

        def fatal(self, exc: WharfError, *, quiet: bool = False) -> None: ...
        def send_frame(self, frame: Any) -> None: ...

    def _tls_info(self) -> tuple[bool, Any]:
        """(the connection has TLS, its verified client certificate or None)."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return False, None
        return True, ssl_object.getpeercert() or None

    def offered_mechanisms(self) -> list[str]:
        tls, cert = self._tls_info()
        return self.broker.authenticator.mechanisms(
            self.peer_host, tls=tls, peer_cert=cert is not None
        )

    async def _check_credentials(self, frame: F.Auth) -> User | None:
        """The user AUTH (and for SCRAM, AUTH_RESPONSE) proves, or None once refused
        (the connection is then closing)."""
        authenticator = self.broker.authenticator
        tls, cert = self._tls_info()
        try:
            if frame.mechanism == MECHANISM_SCRAM:
                return await self._scram(frame)
            if frame.mechanism == MECHANISM_PLAIN:
                return await authenticator.authenticate_plain(
                    frame.username, frame.password, self.peer_host, tls=tls, peer=self.peer
                )
            if frame.mechanism == MECHANISM_EXTERNAL:
                return await authenticator.authenticate_external(
                    cert, self.peer_host, authzid=frame.username, peer=self.peer
                )
        except WharfError as exc:
            self.fatal(AccessRefused(exc.message), quiet=True)  # auth.py logged it
            return None
        offered = self.offered_mechanisms()
        reason = f"auth mechanism {frame.mechanism!r} not supported; use one of {offered}"
        authenticator.note_failure(
            frame.username, self.peer, MECHANISM_OTHER, "native", reason, pair=None
        )
        self.fatal(AccessRefused(reason), quiet=True)
        return None

    async def _scram(self, frame: F.Auth) -> User:
        conversation = self.broker.authenticator.scram_conversation(self.peer_host, peer=self.peer)
        server_first = conversation.server_first(frame.password)
        if self._lifecycle.state is not State.AUTHENTICATING:
            raise AccessRefused("the connection closed during authentication")
        self._login_response = self._loop.create_future()
        self._lifecycle.transition(Event.CHALLENGE)
        self.send_frame(F.AuthChallenge(frame.request_id, server_first))
        client_final = await self._login_response  # cancelled if the connection is lost
        self._login_response = None
        user, self.login_server_final = await conversation.server_final(client_final)
        return user

    def _on_auth_response(self, raw: Any) -> None:
        """AUTH_RESPONSE in AWAITING_RESPONSE: hand the client-final to ``_scram``."""
        try:
            frame = F.parse(raw)
        except WharfError as exc:
            self.fatal(exc)
            return
        assert isinstance(frame, F.AuthResponse)
        self._lifecycle.transition(Event.RESPONSE)
        waiter = self._login_response
        if waiter is not None and not waiter.done():
            waiter.set_result(frame.data)
