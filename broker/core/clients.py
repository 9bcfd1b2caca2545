"""What the broker's connection registry and the admin plane see of a client connection.

``ClientConnection`` is protocol-neutral: the native connection
(wire/native/connection.py) implements it, and so does the AMQP one (wire/amqp/).  The broker
keeps every connection in ``Broker.connections`` (id -> connection), and the management
API lists, describes and closes them through this interface only, never through a wire
module.  Once logged in, a connection is also in its vhost's ``VirtualHost.clients``
(core/vhosts.py): the vhost's max-connections counts them, and deleting the vhost closes
them with ``shutdown``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    from ..store.segments import Segment
    from .queues import Consumer

_connection_ids = itertools.count(1)


def next_connection_id() -> int:
    """A connection id unique for the process, whatever protocol the connection speaks
    (ids of the native and AMQP listeners share ``Broker.connections``)."""
    return next(_connection_ids)


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
        """The wire protocol it speaks: "native" (the Wharf protocol) or "amqp" (AMQP 0-9-1)."""
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

    def describe_channels(self) -> list[dict[str, Any]]:
        """``GET /api/channels``: one ``describe_channel`` per open channel (the native
        protocol's one session is channel 1)."""
        ...

    def shutdown(self, reason: str) -> None:
        """Close it: a fatal ERROR 320 (connection forced) with ``reason``, after the
        frames already queued for it."""
        ...


def describe_channel(
    conn: ClientConnection,
    number: int,
    *,
    consumers: int,
    unacked: int,
    prefetch: int,
    global_prefetch: int,
    confirm: bool,
    transactional: bool,
    published: int,
    delivered: int,
) -> dict[str, Any]:
    """One channel as the management API shows it, in RabbitMQ's field names."""
    return {
        "name": f"{conn.name} ({number})",
        "connection": conn.name,
        "number": number,
        "user": conn.username,
        "vhost": conn.vhost,
        "protocol": conn.protocol,
        "consumer_count": consumers,
        "messages_unacknowledged": unacked,
        "prefetch_count": prefetch,
        "global_prefetch_count": global_prefetch,
        "confirm": confirm,
        "transactional": transactional,
        "message_stats": {"publish": published, "deliver_get": delivered},
    }


class ServedConnection(ClientConnection, Protocol):
    """A connection as the broker process itself drives it: the tick, resource alarms,
    store compaction, group commits and memory accounting, whatever its protocol."""

    transport: asyncio.Transport | None
    peer_host: str
    # Counted among the broker's unauthenticated connections (until login or close).
    counted_unauthenticated: bool

    @property
    def unacked_count(self) -> int:
        """Delivered-but-unacked messages over all its consumer sessions."""
        ...

    @property
    def unacked_bytes(self) -> int: ...

    def tick(self, now: float) -> None:
        """The broker's periodic check (~1/s): timeouts and heartbeats."""
        ...

    def relocate(self, old: Segment) -> int:
        """Store compaction: copy forward its unacked messages stored in ``old``."""
        ...

    def set_blocked(self, alarms: set[str]) -> None:
        """The resource alarms changed (empty: cleared)."""
        ...

    def store_committed(self, batch: int) -> bool:
        """The store's group commit finished ``batch`` (negative: failed); True while
        confirms still wait for the store."""
        ...
