"""Connection caps of the HTTP listeners (http_port and https_port together).

aiohttp accepts every socket it is offered.  :class:`ConnectionCaps` wraps its protocol
factory: each accepted socket is admitted (handed to aiohttp's request handler) while fewer
than ``max_total`` HTTP connections are open and fewer than ``max_per_address`` come from
the socket's peer address; otherwise it gets a 503 and is closed at once, before a byte of
it is read.  Connections already open are never touched, and a slow or silent one holds its
slot only until the request-head timeout closes it (server.py).

Why per address: all slots of one cap can be held by whoever opens sockets fastest.  The
per-address cap keeps a slowloris from one address to its own share, so monitoring
(/metrics, /healthz, /readyz) and ``wharf ctl`` from elsewhere keep working; a flood from
more than ``max_total / max_per_address`` addresses can still fill the total, and the
sockets beyond it are closed cheaply until the head timeout frees slots
(docs/security.md, "HTTP API protections").

On HTTPS a socket is admitted after its TLS handshake (asyncio calls ``connection_made``
then); handshakes themselves are bounded by ``handshake_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Final, cast

# A whole HTTP answer: the socket has sent no request yet, so no request is answered.
_BUSY_BODY: Final = json.dumps(
    {"error": "too many HTTP connections: try again later", "code": 506}
).encode()
BUSY_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)


class ConnectionCaps:
    """Counts the open HTTP connections, in total and per peer address (entries of
    addresses with no connection are dropped, so the map stays bounded by max_total)."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.open = 0
        # Sockets closed at once, by the cap that was full (wharf_http_connections_*).
        self.refused_total = 0
        self.refused_per_address = 0
        self._by_address: dict[str, int] = {}

    @property
    def refused(self) -> int:
        """Sockets closed at once over either cap."""
        return self.refused_total + self.refused_per_address

    def admit(self, address: str) -> bool:
        if self.open >= self.max_total:
            self.refused_total += 1
            return False
        held = self._by_address.get(address, 0)
        if held >= self.max_per_address:
            self.refused_per_address += 1
            return False
        self.open += 1
        self._by_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        left = self._by_address.get(address, 0) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)

    def protocol_factory(
        self, make_handler: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A factory for ``create_server``: the counted front of ``make_handler()``'s."""
        return lambda: _CountedConnection(self, make_handler)


def _peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "" if peer is None else str(peer)  # a Unix socket, or unknown


class _CountedConnection(asyncio.Protocol):
    """Admits its socket or refuses it; once admitted, forwards every event to the
    request handler and gives the slot back when the socket closes."""

    __slots__ = ("_address", "_caps", "_inner", "_make_handler")

    def __init__(self, caps: ConnectionCaps, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self._caps = caps
        self._make_handler = make_handler
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = _peer_address(transport)
        if not self._caps.admit(address):
            # A stream transport (uvloop's do not subclass asyncio.WriteTransport).
            cast(asyncio.Transport, transport).write(BUSY_RESPONSE)
            transport.close()  # the 503 is flushed first; nothing of the socket is read
            return
        self._address = address
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            inner.connection_lost(exc)
        finally:
            self._caps.release(self._address)
