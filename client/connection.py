"""``wharf.connect()`` and the ``Connection`` API."""

from __future__ import annotations

import asyncio
import itertools
import logging
import platform
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from ssl import SSLContext
from types import TracebackType
from typing import Any, Final

from wharf.protocol import frames as F
from wharf.protocol.codec import MAX_BATCH_ITEMS
from wharf.protocol.errors import ConnectionLost, ContentTooLarge, InvalidArgument, WharfError

from .confirms import NOT_CONFIRMED, PublishResult
from .consumer import Consumer
from .core import NEW_REQUEST, ConnectionCore, Reply, clone_error, open_core, result_of
from .logs_api import LogsApi
from .message import Message, QueueInfo, build_properties, message_from_entry
from .recovery import (
    BLOCKED,
    CLOSED,
    DEFAULT_RECONNECT_MAX_DELAY_S,
    DEFAULT_RECONNECT_WAIT_TIMEOUT_S,
    DISCONNECTED,
    ERROR,
    THROTTLED,
    UNBLOCKED,
    BindingRecord,
    ConnectionEvent,
    ExchangeRecord,
    QueueRecord,
    Reconnector,
    Topology,
    run_callback,
)
from .rpc import RpcReplies
from .tls import client_context
from .url import DEFAULT_URL, DEFAULT_VHOST, check_auth_mechanism, parse_url

log = logging.getLogger("wharf.client")

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


class Connection(LogsApi):
    """A connection to a Wharf broker.  Make one with ``await wharf.connect(url)``.

    Every method may raise a ``wharf.WharfError`` subclass; request-level errors
    leave the connection usable, connection-level ones (``ConnectionLost``,
    ``ConnectionForced``, ``HeartbeatTimeout``...) make every later call raise.

    With ``reconnect=True`` a lost connection is replaced instead (see docs/sdk.md):
    calls in flight raise ``ConnectionLost`` (retriable), later calls wait for the
    new connection, and the declared topology and consumers are restored on it.

    The log-topic and consumer-group methods come from ``LogsApi`` (logs_api.py).
    """

    def __init__(
        self, core: ConnectionCore, host: str, port: int, vhost: str = DEFAULT_VHOST
    ) -> None:
        self._core = core
        self.host = host
        self.port = port
        # The virtual host this connection works in (the URL's path; "/" by default).
        self.vhost = vhost
        self._rpc: RpcReplies | None = None
        self._reconnector: Reconnector | None = None
        self._closing = False
        self._closed_reported = False
        self._event_callbacks: list[Callable[[ConnectionEvent], object]] = []
        self._event_tasks: set[asyncio.Task[Any]] = set()
        self._blocked_callbacks: list[Callable[[str | None], None]] = []
        self._blocked_reported: str | None = None
        self._throttled_callbacks: list[Callable[[str, int], None]] = []
        # Milliseconds the broker held this connection back for a byte-rate quota, by
        # direction ("produce", "consume"), since it was made (over reconnects).
        self._throttled_ms: dict[str, int] = {}
        self._error_callbacks: list[Callable[[WharfError], object]] = []
        self._adopt(core)

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open" if self.is_connected else "reconnecting"
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
        """True once the connection is gone for good (with reconnect: closed by the
        application, or the broker refused the reconnect)."""
        if not self._core.ended:
            return False
        return self._reconnector is None or not self._reconnector.reconnecting

    @property
    def is_connected(self) -> bool:
        """False while reconnecting (and once closed)."""
        return not self._core.ended

    @property
    def reconnecting(self) -> bool:
        return self._reconnector is not None and self._reconnector.reconnecting

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
        self._blocked_callbacks.append(callback)

    @property
    def throttled_ms(self) -> dict[str, int]:
        """Milliseconds the broker has held this connection back for its user's byte-rate
        quotas since ``connect``, by direction: ``{"produce": ms, "consume": ms}``."""
        return dict(self._throttled_ms)

    def on_throttled(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(direction, throttle_ms)`` each time the broker holds this
        connection back because its user is over a byte-rate quota (docs/security.md,
        "Limits and quotas"): "produce" (the broker stops reading publishes for
        ``throttle_ms``) or "consume" (deliveries and fetch answers wait).  Nothing fails:
        calls just take longer.  Also a "throttled" event (``on_event``)."""
        self._throttled_callbacks.append(callback)

    def on_error(self, callback: Callable[[WharfError], object]) -> None:
        """Call ``callback(error)`` for an asynchronous error that no call is waiting
        for: a refused fire-and-forget publish (``confirm=False``), a returned
        fire-and-forget ``mandatory`` message (``wharf.Unroutable``), a refused settle of
        a ``get`` message.  Such errors are never raised from a later call; without an
        ``on_error`` callback they are logged (warning).  They also arrive as "error"
        events.  A consumer's settle errors are raised from its iterator instead."""
        self._error_callbacks.append(callback)

    def on_event(self, callback: Callable[[ConnectionEvent], object]) -> None:
        """Call ``callback(event)`` (a ``wharf.ConnectionEvent``) on "disconnected",
        "reconnected", "blocked", "unblocked", "throttled", "queue_renamed",
        "recovery_error", "error" and "closed".  Callbacks run on the event loop and must
        not block; one that returns a coroutine has it run as a task.  Exceptions are
        logged."""
        self._event_callbacks.append(callback)

    # -- connection lifecycle (internal) ------------------------------------------------

    def _emit(self, event: ConnectionEvent) -> None:
        for callback in list(self._event_callbacks):
            run_callback(callback, event, self._event_tasks)

    def _adopt(self, core: ConnectionCore) -> None:
        core.on_fail = self._core_failed
        core.on_async_error = self._async_error
        core.blocked_listeners.append(lambda reason: self._core_blocked(core, reason))
        core.throttle_listeners.append(self._throttled)
        if self._reconnector is not None:
            core.recoverable = True

    def _throttled(self, direction: str, throttle_ms: int) -> None:
        self._throttled_ms[direction] = self._throttled_ms.get(direction, 0) + throttle_ms
        for callback in list(self._throttled_callbacks):
            try:
                callback(direction, throttle_ms)
            except Exception:
                log.exception("wharf: throttled listener failed")
        self._emit(ConnectionEvent(THROTTLED, direction=direction, throttle_ms=throttle_ms))

    def _async_error(self, error: WharfError) -> None:
        callbacks = list(self._error_callbacks)
        if not callbacks:
            log.warning(
                "wharf: asynchronous error from the broker (handle it with conn.on_error): %s",
                error,
            )
        for callback in callbacks:
            run_callback(callback, error, self._event_tasks)
        self._emit(ConnectionEvent(ERROR, error=error))

    def _core_blocked(self, core: ConnectionCore, reason: str | None) -> None:
        if core is self._core:
            self._blocked_changed(reason)

    def _blocked_changed(self, reason: str | None) -> None:
        self._blocked_reported = reason
        for callback in list(self._blocked_callbacks):
            try:
                callback(reason)
            except Exception:
                log.exception("wharf: blocked/unblocked listener failed")
        event = ConnectionEvent(BLOCKED, reason=reason) if reason else ConnectionEvent(UNBLOCKED)
        self._emit(event)

    def _core_failed(self, core: ConnectionCore, error: WharfError) -> None:
        if core is not self._core or self._closing:
            return
        self._emit(ConnectionEvent(DISCONNECTED, error=error))
        reconnector = self._reconnector
        if reconnector is not None and reconnector.final_error is None:
            reconnector.connection_lost(error)
        else:
            self._report_closed(error)

    def _report_closed(self, error: WharfError) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self._emit(ConnectionEvent(CLOSED, error=error))

    def _recovery_event(self, event: ConnectionEvent) -> None:
        if event.name == CLOSED and event.error is not None:
            self._report_closed(event.error)  # "closed" fires once, whoever closes
        else:
            self._emit(event)

    def _enable_reconnect(
        self,
        dial: Callable[[], Awaitable[ConnectionCore]],
        max_delay_s: float,
        wait_timeout_s: float | None,
    ) -> None:
        async def dial_and_adopt() -> ConnectionCore:
            core = await dial()
            self._adopt(core)
            return core

        self._reconnector = Reconnector(
            self._core.loop,
            dial=dial_and_adopt,
            install=self._install,
            emit=self._recovery_event,
            max_delay_s=max_delay_s,
            wait_timeout_s=wait_timeout_s,
        )
        self._core.recoverable = True

    def _install(self, core: ConnectionCore) -> None:
        """A new connection, with topology and consumers restored, replaces the lost one."""
        self._core = core
        self._rpc = None  # the reply queue went with the old connection
        if core.blocked != self._blocked_reported:
            self._blocked_changed(core.blocked)

    async def _live_core(self) -> ConnectionCore:
        """The core to use: while reconnecting, wait (bounded) for the new one."""
        core = self._core
        reconnector = self._reconnector
        if core.ended and reconnector is not None:
            if reconnector.final_error is not None:
                raise clone_error(reconnector.final_error)
            if not self._closing:
                core = await reconnector.wait_restored(core)
        return core

    async def _usable_core(self) -> ConnectionCore:
        core = await self._live_core()
        core.check_usable()
        return core

    async def _request(self, frame: F.Frame) -> Reply:
        """Send a request frame (its ``request_id`` is assigned here) and wait for the
        answer; while reconnecting, first wait for the new connection."""
        core = self._core
        if core.ended:
            core = await self._live_core()
        return await core.request(frame)

    @property
    def _topology(self) -> Topology | None:
        """What to record for replay after a reconnect (None without reconnect)."""
        reconnector = self._reconnector
        return None if reconnector is None else reconnector.topology

    @property
    def max_message_bytes(self) -> int:
        return self._core.max_message_bytes

    async def close(self) -> None:
        """Close cleanly (CLOSE, wait for CLOSE_OK, up to 5 s).  Idempotent.  With
        reconnect, also stops reconnecting; calls waiting for it raise ConnectionLost."""
        self._closing = True
        core = self._core
        core.recoverable = False
        error = ConnectionLost("the connection was closed by the client")
        if self._reconnector is not None:
            await self._reconnector.stop(error)
            core = self._core
            core.recoverable = False
        await core.close(CLOSE_TIMEOUT_S)
        self._report_closed(error)

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
        await self._request(
            F.ExchangeDeclare(
                NEW_REQUEST, name, type, durable, auto_delete, internal, passive, arguments
            )
        )
        topology = self._topology
        if topology is not None and not passive:
            topology.exchange_declared(
                ExchangeRecord(name, type, durable, auto_delete, internal, arguments)
            )

    async def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        await self._request(F.ExchangeDelete(NEW_REQUEST, name, if_unused))
        topology = self._topology
        if topology is not None:
            topology.exchange_deleted(name)

    async def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._request(
            F.ExchangeBind(NEW_REQUEST, destination, source, routing_key, arguments)
        )
        topology = self._topology
        if topology is not None:
            topology.bound(BindingRecord(destination, source, routing_key, arguments, True))

    async def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._request(
            F.ExchangeUnbind(NEW_REQUEST, destination, source, routing_key, arguments)
        )
        topology = self._topology
        if topology is not None:
            topology.unbound(BindingRecord(destination, source, routing_key, arguments, True))

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
        """Declare a queue (``name=""``: the broker names it); returns its name and counts.

        With reconnect, a server-named queue is declared anew after a reconnect if it
        is gone, under a new name (a "queue_renamed" event says which)."""
        reply = await self._request(
            F.QueueDeclare(NEW_REQUEST, name, durable, exclusive, auto_delete, passive, arguments)
        )
        result = result_of(reply)
        info = QueueInfo(
            result.get("queue", name), result.get("messages", 0), result.get("consumers", 0)
        )
        topology = self._topology
        if topology is not None and not passive:
            topology.queue_declared(
                QueueRecord(info.name, durable, exclusive, auto_delete, arguments, not name)
            )
        return info

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._request(F.QueueBind(NEW_REQUEST, queue, exchange, routing_key, arguments))
        topology = self._topology
        if topology is not None:
            topology.bound(BindingRecord(queue, exchange, routing_key, arguments))

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._request(F.QueueUnbind(NEW_REQUEST, queue, exchange, routing_key, arguments))
        topology = self._topology
        if topology is not None:
            topology.unbound(BindingRecord(queue, exchange, routing_key, arguments))

    async def purge_queue(self, name: str) -> int:
        """Drop the queue's ready messages; returns how many."""
        reply = await self._request(F.QueuePurge(NEW_REQUEST, name))
        return int(result_of(reply).get("messages", 0))

    async def replay_dead_letters(
        self,
        queue: str,
        *,
        target: str | None = None,
        reason: str | None = None,
        limit: int = 0,
        max_deaths: int = 0,
    ) -> int:
        """Move dead-lettered messages from ``queue`` (a DLQ) back to the queue each one
        last died in, or to ``target``; filter by the last death's ``reason`` and
        ``max_deaths`` (its count), at most ``limit`` (0 = all).  Returns how many moved.
        """
        reply = await self._request(
            F.QueueReplay(NEW_REQUEST, queue, target, reason, limit, max_deaths)
        )
        return int(result_of(reply).get("moved", 0))

    async def set_policy(
        self,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        *,
        priority: int = 0,
        apply_to: str = "queues",
    ) -> bool:
        """Create or replace a server-side queue policy (needs the administrator tag).

        ``pattern`` is a regular expression searched in queue names; ``definition`` uses
        RabbitMQ's keys (message-ttl, max-length, dead-letter-exchange, ...).  Returns True
        if the policy is new.
        """
        reply = await self._request(
            F.PolicySet(NEW_REQUEST, name, pattern, definition, priority, apply_to)
        )
        return bool(result_of(reply).get("created", False))

    async def delete_policy(self, name: str) -> None:
        await self._request(F.PolicyDelete(NEW_REQUEST, name))

    async def list_policies(self) -> list[dict[str, Any]]:
        reply = await self._request(F.PolicyList(NEW_REQUEST))
        policies = result_of(reply).get("policies", [])
        return list(policies) if isinstance(policies, list) else []

    async def delete_queue(self, name: str, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue; returns how many messages it held."""
        reply = await self._request(F.QueueDelete(NEW_REQUEST, name, if_unused, if_empty))
        topology = self._topology
        if topology is not None:
            topology.queue_deleted(name)
        return int(result_of(reply).get("messages", 0))

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
    ) -> PublishResult:
        """Publish one message; with ``confirm`` (the default) return once the broker
        confirmed it (for persistent messages: once it is on disk).

        Raises ``wharf.Unroutable`` for a ``mandatory`` message that reached no queue,
        and the broker's error if it refused the message.  ``timestamp`` is epoch ms.
        The result's ``duplicate`` is True when a deduplicating queue
        (``x-dedup-window-ms``) had already accepted this ``message_id``.
        """
        core = self._core
        if core.ended:
            core = await self._usable_core()
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
            core.send_frame(F.Publish(0, exchange, routing_key, props, body, flags))
            return NOT_CONFIRMED
        fut: asyncio.Future[PublishResult] = core.loop.create_future()
        seq = core.confirms.add(1, fut)
        core.send_frame(F.Publish(seq, exchange, routing_key, props, body, flags))
        return await fut

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
    ) -> PublishResult:
        """Publish several bodies with the same routing and properties in one frame and
        wait for one confirm covering them all.  The result's ``duplicates`` are the
        indexes a deduplicating queue did not enqueue again (with a ``message_id``, all
        bodies of one call share it: all but the first are duplicates).

        If any message failed, raises the first failure; its ``details`` carry
        ``failed_indexes`` (positions in ``bodies``), ``failed_seqs`` and ``errors``.
        Batches larger than the broker's frame limit, or of more than
        ``MAX_BATCH_ITEMS`` bodies, are split across frames.
        """
        n = len(bodies)
        if n == 0:
            return NOT_CONFIRMED
        core = self._core
        if core.ended:
            core = await self._usable_core()
        if core.must_wait_writable():
            await core.wait_writable()
        if not isinstance(bodies, list):
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
        fut: asyncio.Future[PublishResult] | None = None
        seq = 0
        if confirm:
            fut = core.loop.create_future()
            seq = core.confirms.add(n, fut)
        frame_room = max(
            core.max_frame_bytes - PUBLISH_MANY_OVERHEAD_BYTES, core.max_frame_bytes // 2
        )
        if n <= MAX_BATCH_ITEMS and sum(map(len, bodies)) + BODY_HEADER_BYTES * n <= frame_room:
            core.send_frame(F.PublishMany(seq, exchange, routing_key, props, bodies, flags))
        else:
            for offset, chunk in _split_by_size(bodies, frame_room):
                first = seq + offset if seq else 0
                core.send_frame(F.PublishMany(first, exchange, routing_key, props, chunk, flags))
                if core.must_wait_writable():
                    core.flush()
        if fut is not None:
            return await fut
        return NOT_CONFIRMED

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
            owner=None if self._reconnector is None else _ConsumerOwner(self),
        )

    async def get(self, queue: str, no_ack: bool = False) -> Message | None:
        """Fetch one message (None when the queue is empty)."""
        core = self._core
        if core.ended:
            core = await self._live_core()
        reply = await core.request(F.Get(NEW_REQUEST, queue, no_ack))
        entry = reply.delivery if type(reply) is F.GetOk else None
        if entry is None:
            return None
        return message_from_entry(entry, None if no_ack else core.get_channel)

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
        correlation_id = uuid.uuid4().hex
        fut: asyncio.Future[Message] = self._core.loop.create_future()
        replies: RpcReplies | None = None
        try:
            async with asyncio.timeout(timeout):
                core = await self._live_core()
                replies = self._rpc
                if replies is None or replies.core is not core:
                    replies = self._rpc = RpcReplies(core)
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
            if replies is not None:
                replies.waiters.pop(correlation_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved, whichever way this call ended


def _too_large(size: int, limit: int) -> WharfError:
    return ContentTooLarge(
        f"message body of {size} bytes exceeds the broker's max_message_bytes={limit}",
        details={"size": size, "max_message_bytes": limit},
    )


def _split_by_size(
    bodies: list[bytes], room: int, max_count: int = MAX_BATCH_ITEMS
) -> list[tuple[int, list[bytes]]]:
    """Cut ``bodies`` into runs that each fit in ``room`` bytes and hold at most
    ``max_count`` bodies (the broker's decoding limit): (offset, run) pairs."""
    chunks: list[tuple[int, list[bytes]]] = []
    start = 0
    size = 0
    for i, body in enumerate(bodies):
        cost = len(body) + BODY_HEADER_BYTES
        if (size + cost > room or i - start >= max_count) and i > start:
            chunks.append((start, bodies[start:i]))
            start = i
            size = 0
        size += cost
    chunks.append((start, bodies[start:]))
    return chunks


class _ConsumerOwner:
    """A reconnecting connection, as its consumers see it (``ConsumerOwner``)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def live_core(self) -> ConnectionCore:
        return await self._conn._live_core()

    def consumer_started(self, consumer: Consumer) -> None:
        reconnector = self._conn._reconnector
        if reconnector is not None:
            reconnector.consumer_started(consumer)

    def consumer_stopped(self, consumer: Consumer) -> None:
        reconnector = self._conn._reconnector
        if reconnector is not None:
            reconnector.consumer_stopped(consumer)


async def connect(
    url: str = DEFAULT_URL,
    *,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,  # noqa: ASYNC109 (the whole call's budget)
    client_properties: dict[str, Any] | None = None,
    reconnect: bool = False,
    reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY_S,
    reconnect_wait_timeout: float | None = DEFAULT_RECONNECT_WAIT_TIMEOUT_S,
    ssl: SSLContext | None = None,
    auth_mechanism: str | None = None,
) -> Connection:
    """Open a connection: TCP connect, TLS handshake, Wharf handshake and
    authentication, all within ``timeout`` seconds (else ``TimeoutError``).

    ``url`` is ``wharf://user:password@host:port[/vhost]`` (the path names the virtual
    host, as in RabbitMQ's URIs: none is "/", ``/%2Fx`` is "/x"), or for TLS
    ``wharfs://user:password@host:port`` (port 5681 by default; query options
    ``cafile``, ``certfile``, ``keyfile``: PEM files).  ``ssl``: an ``ssl.SSLContext``
    for a wharfs:// URL instead of those options.  The broker's certificate and name are
    checked; a failed TLS handshake raises ``wharf.TlsError``.  A refused login raises
    ``wharf.AccessRefused``; an unreachable broker ``wharf.ConnectionLost``.

    Login: SCRAM-SHA-256 when the broker offers it (the password never crosses the wire,
    and the broker must prove it knows the credential), else PLAIN; EXTERNAL (the TLS
    client certificate) when the URL has no password and the broker offers it.
    ``auth_mechanism`` ("SCRAM-SHA-256", "PLAIN", "EXTERNAL"; or ``?auth_mechanism=`` in
    the URL) forces one.

    ``reconnect=True``: when the connection is lost later (not closed by you), dial
    again with exponential backoff and full jitter (0.1 s doubling, capped at
    ``reconnect_max_delay`` seconds), restore what this connection declared and
    consumed, and fire events (``on_event``).  Calls made meanwhile wait up to
    ``reconnect_wait_timeout`` seconds for the new connection (None: until it is
    back or closed; 0: fail at once), then raise ``ConnectionLost``.  This first
    connect is not retried.
    """
    params = parse_url(url)
    if auth_mechanism is not None:
        params = params._replace(auth_mechanism=check_auth_mechanism(auth_mechanism))
    ssl_context = client_context(params, ssl)
    if heartbeat_s < 0:
        raise InvalidArgument("heartbeat_s must be >= 0 (0 turns heartbeats off)")
    if reconnect and not reconnect_max_delay > 0:
        raise InvalidArgument("reconnect_max_delay must be > 0 seconds")
    if reconnect_wait_timeout is not None and reconnect_wait_timeout < 0:
        raise InvalidArgument("reconnect_wait_timeout must be >= 0 seconds (or None)")
    props: dict[str, Any] = {
        "product": "wharf-python",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
    }
    if client_properties:
        props.update(client_properties)
    # The vhost (the URL's path) travels as an AUTH client property (protocol/SPEC.md).
    props[F.AUTH_VHOST_PROPERTY] = params.vhost
    request_ids = itertools.count(1)
    core = await open_core(params, heartbeat_s, timeout, props, request_ids, ssl_context)
    conn = Connection(core, params.host, params.port, params.vhost)
    if reconnect:
        conn._enable_reconnect(
            lambda: open_core(params, heartbeat_s, timeout, props, request_ids, ssl_context),
            reconnect_max_delay,
            reconnect_wait_timeout,
        )
    return conn


__all__ = ["Connection", "connect"]
