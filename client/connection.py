"""``wharf.connect()`` and the ``Connection`` API."""

from __future__ import annotations

import asyncio
import platform
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final

from wharf.protocol import frames as F
from wharf.protocol.errors import ConnectionLost, ContentTooLarge, InvalidArgument, WharfError

from .consumer import Consumer
from .core import ConnectionCore
from .message import Message, QueueInfo, build_properties, message_from_entry
from .rpc import RpcReplies
from .url import DEFAULT_URL, parse_url

__version__: Final = "0.1.0"

DEFAULT_HEARTBEAT_S: Final = 60
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_PREFETCH: Final = 100
DEFAULT_RPC_TIMEOUT_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 5.0
# Room left in a PUBLISH_MANY frame for everything but the bodies (properties,
# names, msgpack headers); bigger batches are split across frames.
PUBLISH_MANY_OVERHEAD_BYTES: Final = 64 * 1024
BODY_HEADER_BYTES: Final = 5


class Connection:
    """A connection to a Wharf broker.  Make one with ``await wharf.connect(url)``.

    Every method may raise a ``wharf.WharfError`` subclass; request-level errors
    leave the connection usable, connection-level ones (``ConnectionLost``,
    ``ConnectionForced``, ``HeartbeatTimeout``...) make every later call raise.
    """

    def __init__(self, core: ConnectionCore, host: str, port: int) -> None:
        self._core = core
        self.host = host
        self.port = port
        self._rpc: RpcReplies | None = None

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<wharf.Connection {self.host}:{self.port} {self.connection_id} {state}>"

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._core.closed_error is not None

    @property
    def connection_id(self) -> str:
        return self._core.connection_id

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat interval agreed with the broker (0 = off)."""
        return self._core.heartbeat_s

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._core.server_properties

    @property
    def blocked(self) -> str | None:
        """The broker's resource alarm ("memory", "disk") while it blocks publishing."""
        return self._core.blocked

    def on_blocked(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(reason)`` when the broker blocks publishing, ``callback(None)``
        when it unblocks.  While blocked, publishes wait (the broker stops reading)."""
        self._core.blocked_listeners.append(callback)

    @property
    def max_message_bytes(self) -> int:
        return self._core.max_message_bytes

    async def close(self) -> None:
        """Close cleanly (CLOSE, wait for CLOSE_OK, up to 5 s).  Idempotent."""
        await self._core.close(CLOSE_TIMEOUT_S)

    # -- topology --------------------------------------------------------------------

    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._core.request(
            F.EXCHANGE_DECLARE, name, type, durable, auto_delete, internal, passive, arguments
        )

    async def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        await self._core.request(F.EXCHANGE_DELETE, name, if_unused)

    async def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._core.request(F.EXCHANGE_BIND, destination, source, routing_key, arguments)

    async def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._core.request(F.EXCHANGE_UNBIND, destination, source, routing_key, arguments)

    async def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> QueueInfo:
        """Declare a queue (``name=""``: the broker names it); returns its name and counts."""
        frame = await self._core.request(
            F.QUEUE_DECLARE, name, durable, exclusive, auto_delete, passive, arguments
        )
        result = _result(frame)
        return QueueInfo(
            result.get("queue", name), result.get("messages", 0), result.get("consumers", 0)
        )

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._core.request(F.QUEUE_BIND, queue, exchange, routing_key, arguments)

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._core.request(F.QUEUE_UNBIND, queue, exchange, routing_key, arguments)

    async def purge_queue(self, name: str) -> int:
        """Drop the queue's ready messages; returns how many."""
        frame = await self._core.request(F.QUEUE_PURGE, name)
        return int(_result(frame).get("messages", 0))

    async def delete_queue(self, name: str, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue; returns how many messages it held."""
        frame = await self._core.request(F.QUEUE_DELETE, name, if_unused, if_empty)
        return int(_result(frame).get("messages", 0))

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        timestamp: int | datetime | None = None,
        type: str | None = None,
        app_id: str | None = None,
        user_id: str | None = None,
        persistent: bool = False,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = False,
        confirm: bool = True,
    ) -> None:
        """Publish one message; with ``confirm`` (the default) return once the broker
        confirmed it (for persistent messages: once it is on disk).

        Raises ``wharf.Unroutable`` for a ``mandatory`` message that reached no queue,
        and the broker's error if it refused the message.  ``timestamp`` is epoch ms.
        """
        core = self._core
        if core.closed_error is not None or core.stored_error is not None:
            core.check_usable()
        if core.must_wait_writable():
            await core.wait_writable()
        if len(body) > core.max_message_bytes:
            raise _too_large(len(body), core.max_message_bytes)
        props = build_properties(
            headers, content_type, content_encoding, message_id, correlation_id, reply_to,
            timestamp, type, app_id, user_id, persistent, priority, expiration,
        )  # fmt: skip
        flags = F.FLAG_MANDATORY if mandatory else 0
        if not confirm:
            core.send(core.encode((F.PUBLISH, 0, exchange, routing_key, props, body, flags)))
            return
        fut: asyncio.Future[None] = core.loop.create_future()
        seq = core.confirms.add(1, fut)
        core.send(core.encode((F.PUBLISH, seq, exchange, routing_key, props, body, flags)))
        await fut

    async def publish_many(
        self,
        exchange: str,
        routing_key: str,
        bodies: Sequence[bytes],
        *,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        timestamp: int | datetime | None = None,
        type: str | None = None,
        app_id: str | None = None,
        user_id: str | None = None,
        persistent: bool = False,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = False,
        confirm: bool = True,
    ) -> None:
        """Publish several bodies with the same routing and properties in one frame and
        wait for one confirm covering them all.

        If any message failed, raises the first failure; its ``details`` carry
        ``failed_indexes`` (positions in ``bodies``), ``failed_seqs`` and ``errors``.
        Batches larger than the broker's frame limit are split across frames.
        """
        n = len(bodies)
        if n == 0:
            return
        core = self._core
        if core.closed_error is not None or core.stored_error is not None:
            core.check_usable()
        if core.must_wait_writable():
            await core.wait_writable()
        if not isinstance(bodies, list | tuple):
            bodies = list(bodies)
        limit = core.max_message_bytes
        largest = max(map(len, bodies))
        if largest > limit:
            raise _too_large(largest, limit)
        props = build_properties(
            headers, content_type, content_encoding, message_id, correlation_id, reply_to,
            timestamp, type, app_id, user_id, persistent, priority, expiration,
        )  # fmt: skip
        flags = F.FLAG_MANDATORY if mandatory else 0
        fut: asyncio.Future[None] | None = None
        seq = 0
        if confirm:
            fut = core.loop.create_future()
            seq = core.confirms.add(n, fut)
        frame_room = max(
            core.max_frame_bytes - PUBLISH_MANY_OVERHEAD_BYTES, core.max_frame_bytes // 2
        )
        if sum(map(len, bodies)) + BODY_HEADER_BYTES * n <= frame_room:
            core.send(
                core.encode((F.PUBLISH_MANY, seq, exchange, routing_key, props, bodies, flags))
            )
        else:
            for offset, chunk in _split_by_size(bodies, frame_room):
                first = seq + offset if seq else 0
                core.send(
                    core.encode((F.PUBLISH_MANY, first, exchange, routing_key, props, chunk, flags))
                )
                if core.must_wait_writable():
                    core.flush()
        if fut is not None:
            await fut

    # -- consuming -------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = DEFAULT_PREFETCH,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> Consumer:
        """Subscribe to a queue: ``async with conn.consume(q) as messages: async for ...``.

        ``prefetch`` caps unacked deliveries (0 = no limit).  An empty
        ``consumer_tag`` gets one made up by the SDK.
        """
        return Consumer(
            self._core,
            queue,
            prefetch=prefetch,
            no_ack=no_ack,
            exclusive=exclusive,
            consumer_tag=consumer_tag,
            arguments=arguments,
        )

    async def get(self, queue: str, no_ack: bool = False) -> Message | None:
        """Fetch one message (None when the queue is empty)."""
        core = self._core
        frame = await core.request(F.GET, queue, no_ack, check_after=False)
        entry = frame[2] if frame[0] == F.GET_OK and len(frame) > 2 else None
        msg = None
        if entry is not None:
            msg = message_from_entry(entry, None if no_ack else core.get_channel)
        if core.stored_error is not None and not (no_ack and msg is not None):
            # An earlier bad ack is reported here; give the message back first.
            if msg is not None and core.closed_error is None:
                core.send(core.encode((F.NACK, 0, msg.delivery_tag, False, True)))
            core.check_usable()
        return msg

    async def rpc(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        timeout: float = DEFAULT_RPC_TIMEOUT_S,  # noqa: ASYNC109 (the whole call's budget)
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
        timestamp: int | datetime | None = None,
        type: str | None = None,
        app_id: str | None = None,
        user_id: str | None = None,
        persistent: bool = False,
        priority: int | None = None,
        expiration: int | None = None,
        mandatory: bool = True,
    ) -> Message:
        """Publish a request with ``reply_to``/``correlation_id`` set and wait for the
        reply (the whole call within ``timeout`` seconds, else ``TimeoutError``).

        The responder publishes its reply to the default exchange ("") with routing
        key = the request's ``reply_to`` and the same ``correlation_id``.  An unroutable
        request raises ``wharf.Unroutable`` at once (``mandatory=True``).
        """
        if self._rpc is None:
            self._rpc = RpcReplies(self._core)
        replies = self._rpc
        correlation_id = uuid.uuid4().hex
        fut: asyncio.Future[Message] = self._core.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                reply_to = await replies.ensure_ready()
                replies.waiters[correlation_id] = fut
                await self.publish(
                    exchange, routing_key, body, headers=headers, content_type=content_type,
                    content_encoding=content_encoding, message_id=message_id,
                    correlation_id=correlation_id, reply_to=reply_to, timestamp=timestamp,
                    type=type, app_id=app_id, user_id=user_id, persistent=persistent,
                    priority=priority, expiration=expiration, mandatory=mandatory,
                )  # fmt: skip
                return await fut
        finally:
            replies.waiters.pop(correlation_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved, whichever way this call ended


def _result(frame: list[Any]) -> dict[str, Any]:
    result = frame[2] if len(frame) > 2 else None
    return result if isinstance(result, dict) else {}


def _too_large(size: int, limit: int) -> WharfError:
    return ContentTooLarge(
        f"message body of {size} bytes exceeds the broker's max_message_bytes={limit}",
        details={"size": size, "max_message_bytes": limit},
    )


def _split_by_size(bodies: Sequence[bytes], room: int) -> list[tuple[int, Sequence[bytes]]]:
    """Cut ``bodies`` into runs that each fit in ``room`` bytes: (offset, run) pairs."""
    chunks: list[tuple[int, Sequence[bytes]]] = []
    start = 0
    size = 0
    for i, body in enumerate(bodies):
        cost = len(body) + BODY_HEADER_BYTES
        if size + cost > room and i > start:
            chunks.append((start, bodies[start:i]))
            start = i
            size = 0
        size += cost
    chunks.append((start, bodies[start:]))
    return chunks


async def connect(
    url: str = DEFAULT_URL,
    *,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,  # noqa: ASYNC109 (the whole call's budget)
    client_properties: dict[str, Any] | None = None,
) -> Connection:
    """Open a connection: TCP connect, handshake and authentication, all within
    ``timeout`` seconds (else ``TimeoutError``).

    ``url`` is ``wharf://user:password@host:port``.  A refused login raises
    ``wharf.AccessRefused``; an unreachable broker ``wharf.ConnectionLost``.
    """
    params = parse_url(url)
    if heartbeat_s < 0:
        raise InvalidArgument("heartbeat_s must be >= 0 (0 turns heartbeats off)")
    props: dict[str, Any] = {
        "product": "wharf-python",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
    }
    if client_properties:
        props.update(client_properties)
    loop = asyncio.get_running_loop()
    core: ConnectionCore | None = None
    where = f"{params.host}:{params.port}"
    try:
        async with asyncio.timeout(timeout):
            try:
                _, core = await loop.create_connection(
                    lambda: ConnectionCore(loop), params.host, params.port
                )
            except OSError as exc:
                raise ConnectionLost(
                    f"cannot connect to the broker at {where}: {exc.strerror or exc}",
                    details={"host": params.host, "port": params.port},
                ) from exc
            await core.handshake(params.username, params.password, heartbeat_s, props)
    except TimeoutError:
        if core is not None:
            core.abort(ConnectionLost("connect timed out"))
        raise TimeoutError(f"connecting to the broker at {where} took over {timeout} s") from None
    except BaseException:
        if core is not None:
            core.abort(ConnectionLost("connect failed"))
        raise
    return Connection(core, params.host, params.port)


__all__ = ["Connection", "connect"]
