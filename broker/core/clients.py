"""What the broker's connection registry and the admin plane see of a client connection.

``ClientConnection`` is protocol-neutral: the native connection
(wire/native/connection.py) implements it, and the AMQP connection will too.  The broker
keeps every connection in ``Broker.connections`` (id -> connection), and the management
API lists, describes and closes them through this interface only, never through a wire
module.  Once logged in, a connection is also in its vhost's ``VirtualHost.clients``
(core/vhosts.py): the vhost's max-connections counts them, and deleting the vhost closes
them with ``shutdown``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .queues import Consumer


class ClientConnection(Protocol):
    """One client connection, whatever protocol it speaks."""

    @property
    def id(self) -> int:
        """The registry key (``Broker.connections``), unique for the process."""
        ...

    @property
    def name(self) -> str:
        """What the API and the logs call it (``conn-7``)."""
        ...

    @property
    def protocol(self) -> str:
        """The wire protocol it speaks: "native" (the Wharf protocol), later "amqp"."""
        ...

    @property
    def username(self) -> str:
        """The authenticated user; "" until authentication succeeds."""
        ...

    @property
    def vhost(self) -> str:
        """The virtual host it works in ("/" until authentication names another);
        deleting a vhost closes its connections (``shutdown``)."""
        ...

    @property
    def peer(self) -> str:
        """The client's address, ``host:port``."""
        ...

    @property
    def channels(self) -> int:
        """Open consumer sessions (channels) on it; the native protocol has one."""
        ...

    def all_consumers(self) -> list[Consumer]:
        """Its consumers, over all its channels."""
        ...

    def describe(self) -> dict[str, Any]:
        """The management API's view (docs/management.md, ``GET /api/connections``):
        name, peer, user, state, protocol, channels and counts."""
        ...

    def shutdown(self, reason: str) -> None:
        """Close it: a fatal ERROR 320 (connection forced) with ``reason``, after the
        frames already queued for it."""
        ...
