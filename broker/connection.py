"""One client connection: handshake, authentication, heartbeats, flow control, dispatch.

A connection owns its socket, its delivery tags, its unacked table and its
consumers.  Frames are decoded in ``data_received`` and handled synchronously;
outgoing frames are buffered and written once per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, FrameEncoder
from wharf.protocol.errors import (
    AccessRefused,
    CommandInvalid,
    ConnectionForced,
    ContentTooLarge,
    DeliveryAckTimeout,
    HeartbeatTimeout,
    InternalError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ProtocolSyntaxError,
    ResourceError,
    ResourceLocked,
    UnknownDeliveryTag,
    Unroutable,
    WharfError,
)

from .exchanges import TopicTarget
from .logs.requests import LogRequests
from .logs.routed import append_routed, routed_records
from .policies.deadletter import REJECTED
from .policies.registry import make_policy
from .queues import Consumer, Message, Queue

if TYPE_CHECKING:
    from .logs import TopicRegistry
    from .logs.groups import GroupCoordinator
    from .logs.partition import Partition
    from .server import Broker
    from .store.segments import Segment

log = logging.getLogger("wharf.connection")

SERVER_NAME: Final = "wharf"
# Transport write-buffer watermarks: above HIGH we stop dispatching to this
# connection's consumers and stop reading its publishes; below LOW we resume.
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
WRITE_BUFFER_LOW_BYTES: Final = 1024 * 1024
MAX_PREFETCH: Final = 1_000_000
MAX_CONSUMER_TAG_CHARS: Final = 255

_conn_ids = itertools.count(1)

# Unacked table entry: (message, queue, consumer or None for basic.get).
Unacked = tuple[Message, Queue, Consumer | None]


class LogSyncWait:
    """The fsyncs of log-topic partitions that persistent publishes of one event-loop
    iteration wait for before their confirms (one ``Partition.sync()`` per partition,
    asked once the iteration's appends are done, so it covers all of them)."""

    __slots__ = ("partitions", "pending", "error")

    def __init__(self) -> None:
        self.partitions: dict[int, Partition] = {}
        self.pending = 0
        self.error: WharfError | None = None


# A publish waiting for its confirm: (first seq, last seq, store batch or 0, log fsyncs
# or None).  Every publish after the first waiting one waits too, in order.
ConfirmWait = tuple[int, int, int, LogSyncWait | None]


class Connection(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.topology = broker.topology
        self.settings = broker.settings
        self.id = next(_conn_ids)
        self.name = f"conn-{self.id}"
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_host = ""
        self.username = ""
        self.user_tags: tuple[str, ...] = ()
        self.client_properties: dict[str, Any] = {}
        self.authenticated = False
        self._auth_task: asyncio.Task[None] | None = None
        self._decoder = FrameDecoder(
            self.settings.max_frame_bytes, expect_handshake=True, use_list=False
        )
        self._encoder = FrameEncoder()
        self._encode = self._encoder.encode_array
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.writable = True
        self._blocked_reading = False
        self.closing = False
        self.closed = False
        self.heartbeat_s = 0
        now = self._loop.time()
        self.created_at = now
        self.last_recv = now
        self.last_send = now
        # Publisher confirms: highest sequence number ready to confirm, not yet sent.
        self._confirm_up_to = 0
        # Publishes waiting for an fsync (message store or log topics), and every
        # publish after the first such one, in order.
        self._confirm_waits: deque[ConfirmWait] = deque()
        # The newest message-store batch that failed (its publishes are nacked).
        self._store_failed_batch = 0
        # Log-topic fsyncs the persistent publishes of this loop iteration wait for.
        self._log_sync: LogSyncWait | None = None
        # Deliveries.
        self._next_tag = 0
        self._unacked: dict[int, Unacked] = {}
        # (first delivery tag of a batch, loop time it was sent) for the ack timeout.
        self._delivery_times: deque[tuple[int, float]] = deque()
        self.consumers: dict[str, Consumer] = {}
        self._ctag_seq = itertools.count(1)
        self.exclusive_queues: list[Queue] = []
        # Log-topic produce acks and fetch long-polls (made at the first such request).
        self._log_requests: LogRequests | None = None
        self._handlers: dict[int, Callable[[Any], None]] = {
            F.PUBLISH_MANY: self._on_publish_many,
            F.PUBLISH: self._on_publish,
            F.ACK_MANY: self._on_ack_many,
            F.ACK: self._on_ack,
            F.NACK: self._on_nack,
            F.REJECT: self._on_reject,
            F.HEARTBEAT: self._on_heartbeat,
            F.GET: self._on_get,
            F.CONSUME: self._on_consume,
            F.CANCEL: self._on_cancel,
            F.EXCHANGE_DECLARE: self._on_exchange_declare,
            F.EXCHANGE_DELETE: self._on_exchange_delete,
            F.EXCHANGE_BIND: self._on_exchange_bind,
            F.EXCHANGE_UNBIND: self._on_exchange_unbind,
            F.QUEUE_DECLARE: self._on_queue_declare,
            F.QUEUE_BIND: self._on_queue_bind,
            F.QUEUE_UNBIND: self._on_queue_unbind,
            F.QUEUE_PURGE: self._on_queue_purge,
            F.QUEUE_DELETE: self._on_queue_delete,
            F.QUEUE_REPLAY: self._on_queue_replay,
            F.POLICY_SET: self._on_policy_set,
            F.POLICY_DELETE: self._on_policy_delete,
            F.POLICY_LIST: self._on_policy_list,
            F.CLOSE: self._on_close,
            F.CLOSE_OK: self._on_close_ok,
            # --- log topics (broker/logs) ---
            F.TOPIC_CREATE: self._on_topic_create,
            F.TOPIC_DELETE: self._on_topic_delete,
            F.TOPIC_DESCRIBE: self._on_topic_describe,
            F.TOPIC_ALTER: self._on_topic_alter,
            F.PRODUCE: self._on_produce,
            F.FETCH: self._on_fetch,
            F.LIST_OFFSETS: self._on_list_offsets,
            F.FETCH_MANY: self._on_fetch_many,
            F.TOPIC_LIST: self._on_topic_list,
            F.INIT_PRODUCER: self._on_init_producer,
            F.TOPIC_BIND: self._on_topic_bind,
            F.TOPIC_UNBIND: self._on_topic_unbind,
            # --- end log topics ---
            # --- consumer groups (broker/logs/groups.py) ---
            F.GROUP_JOIN: self._on_group_join,
            F.GROUP_HEARTBEAT: self._on_group_heartbeat,
            F.GROUP_LEAVE: self._on_group_leave,
            F.OFFSET_COMMIT: self._on_offset_commit,
            F.OFFSET_FETCH: self._on_offset_fetch,
            F.GROUP_LIST: self._on_group_list,
            F.GROUP_DESCRIBE: self._on_group_describe,
            F.GROUP_DELETE: self._on_group_delete,
            F.GROUP_RESET_OFFSETS: self._on_group_reset_offsets,
            # --- end consumer groups ---
        }

    # -- transport callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        broker = self.broker
        if broker.stopping:
            self.fatal(ConnectionForced("broker is shutting down"))
            return
        if len(broker.connections) >= self.settings.max_connections:
            log.warning(
                "refusing %s: max_connections=%d reached", self.peer, self.settings.max_connections
            )
            self.fatal(ResourceError(f"connection limit {self.settings.max_connections} reached"))
            return
        broker.connections[self.id] = self
        s = self.settings
        self._send_frame(
            F.Hello(
                0,
                F.PROTOCOL_VERSION,
                SERVER_NAME,
                s.max_frame_bytes,
                s.max_message_bytes,
                s.heartbeat_s,
                ["PLAIN"],
            )
        )

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_recv = self._loop.time()
        try:
            raws = self._decoder.feed(data)
        except WharfError as exc:
            self.fatal(exc)
            return
        for raw in raws:
            if self.closing:
                return
            self._handle(raw)
        if self._decoder.error_pending:
            try:
                self._decoder.feed(b"")
            except WharfError as exc:
                self.fatal(exc)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.writable = False
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        if self.transport is not None and not self.closing and not self._blocked_reading:
            self.transport.resume_reading()
        for c in list(self.consumers.values()):
            c.queue.schedule_dispatch()

    # -- resource alarms -----------------------------------------------------------

    def set_blocked(self, alarms: set[str]) -> None:
        """The broker's alarms changed: tell the client, stop or resume reading."""
        if not self.authenticated or self.closing:
            return
        if alarms:
            self._send(self._encode((F.BLOCKED, 0, ",".join(sorted(alarms)))))
            return
        self._send(self._encode((F.UNBLOCKED, 0)))
        if self._blocked_reading:
            self._blocked_reading = False
            if self.transport is not None and self.writable:
                self.transport.resume_reading()

    def _block_reading(self) -> None:
        """A publish arrived during an alarm: read nothing more until it clears."""
        self._blocked_reading = True
        if self.transport is not None:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        if self._auth_task is not None and not self._auth_task.done():
            self._auth_task.cancel()
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self.requeue_unacked(None)
        for q in self.exclusive_queues:
            if self.topology.queues.get(q.name) is q:
                self.topology.delete_queue_object(q)
        self.exclusive_queues.clear()
        self.broker.connections.pop(self.id, None)
        self.broker._store_waiting.discard(self)
        if self._log_requests is not None:
            self._log_requests.close()
        if self.broker.groups is not None:
            self.broker.groups.connection_closed(self.id)
        self.broker.connection_closed(self)
        if self.authenticated:
            log.info(
                "%s closed (%s, user %s)",
                self.name,
                self.peer,
                self.username,
                extra={"conn": self.name},
            )

    # -- output ----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._wbuf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _send_frame(self, frame: F.Frame) -> None:
        self._send(self._encoder.encode(frame))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._confirm_up_to:
            self._wbuf.append(self._encode((F.CONFIRM, 0, self._confirm_up_to)))
            self._confirm_up_to = 0
        if not self._wbuf or self.transport is None or self.transport.is_closing():
            self._wbuf.clear()
            return
        buf = self._wbuf
        self._wbuf = []
        self.transport.writelines(buf)
        self.last_send = self._loop.time()

    def send_error(self, request_id: int, exc: WharfError, *, fatal: bool = False) -> None:
        details = exc.details or None
        if details is not None:
            details = {k: v for k, v in details.items() if k != "request_id"} or None
        self._send(self._encode((F.ERROR, request_id, exc.code, exc.message, fatal, details)))

    def fatal(self, exc: WharfError) -> None:
        """Send a connection-fatal error and close once it is written."""
        if self.closing:
            return
        if self.authenticated or exc.code != 505:
            log.info(
                "%s: closing with %d %s",
                self.name,
                exc.code,
                exc.message,
                extra={"conn": self.name},
            )
        self.send_error(0, exc, fatal=True)
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self, reason: str) -> None:
        """Broker shutdown: a fatal 320 then close."""
        self.fatal(ConnectionForced(reason))

    # -- dispatch ------------------------------------------------------------------

    def _handle(self, raw: Any) -> None:
        ftype = raw[0]
        if not self.authenticated:
            self._handle_unauthenticated(raw)
            return
        handler = self._handlers.get(ftype)
        rid = raw[1]
        try:
            if handler is None:
                if ftype in F.SPECS:
                    raise CommandInvalid(f"frame {F.FRAME_NAMES[ftype]} is not sent by clients")
                F.parse(raw)  # raises NotImplementedByBroker
                return
            handler(F.parse(raw))
        except WharfError as exc:
            self._fail_request(ftype, rid, raw, exc)
        except Exception:
            log.exception("%s: internal error handling frame type %s", self.name, ftype)
            self._fail_request(
                ftype, rid, raw, InternalError("internal error; the broker logged it")
            )

    def _fail_request(self, ftype: int, rid: int, raw: Any, exc: WharfError) -> None:
        if ftype == F.PUBLISH or ftype == F.PUBLISH_MANY:
            # The request id of a publish is its sequence number: answer with nacks, so a
            # later cumulative confirm can never cover a message that was not queued.
            bodies = raw[5] if ftype == F.PUBLISH_MANY and len(raw) > 5 else None
            count = len(bodies) if isinstance(bodies, (list, tuple)) and bodies else 1
            self._nack(rid if rid > 0 else 0, count, exc)
        else:
            self.send_error(rid, exc)

    def _handle_unauthenticated(self, raw: Any) -> None:
        if raw[0] == F.HEARTBEAT:
            return
        if raw[0] != F.AUTH or self._auth_task is not None:
            self.fatal(CommandInvalid("expected AUTH as the first frame"))
            return
        try:
            frame = F.parse(raw)
        except WharfError as exc:
            self.fatal(exc)
            return
        assert isinstance(frame, F.Auth)
        self._auth_task = self._loop.create_task(self._authenticate(frame))

    async def _authenticate(self, frame: F.Auth) -> None:
        if frame.mechanism != "PLAIN":
            self.fatal(
                AccessRefused(f"auth mechanism {frame.mechanism!r} not supported; use PLAIN")
            )
            return
        try:
            user = await self.broker.authenticator.authenticate(
                frame.username, frame.password, self.peer_host
            )
        except WharfError as exc:
            self.fatal(AccessRefused(exc.message))
            return
        if self.closing:
            return
        self.username = user.name
        self.user_tags = tuple(user.tags)
        self.client_properties = frame.client_properties or {}
        server_hb = self.settings.heartbeat_s
        client_hb = frame.heartbeat_s
        self.heartbeat_s = (
            0 if client_hb <= 0 else (min(client_hb, server_hb) if server_hb > 0 else client_hb)
        )
        self.authenticated = True
        self.last_recv = self._loop.time()
        self._send_frame(
            F.AuthOk(frame.request_id, self.name, self.heartbeat_s, {"product": "wharf"})
        )
        if self.broker.alarms:
            self.set_blocked(self.broker.alarms)
        log.info(
            "%s opened from %s as %s",
            self.name,
            self.peer,
            self.username,
            extra={"conn": self.name},
        )

    def _ok(self, rid: int, result: dict[str, Any] | None = None) -> None:
        self._send(self._encode((F.OK, rid, result)))

    # -- periodic checks (called by the broker's ticker, ~1/s) ---------------------

    def tick(self, now: float) -> None:
        if self.closing:
            return
        if not self.authenticated:
            if now - self.created_at > self.settings.handshake_timeout_s:
                self.fatal(AccessRefused("handshake/authentication not completed in time"))
            return
        hb = self.heartbeat_s
        if hb:
            if now - self.last_recv > 2 * hb:
                self.fatal(HeartbeatTimeout(f"no frame from the client for {2 * hb} s"))
                return
            if now - self.last_send >= hb / 2:
                self._send(self._encode((F.HEARTBEAT, 0)))
        self._check_ack_timeout(now)

    def _check_ack_timeout(self, now: float) -> None:
        unacked = self._unacked
        times = self._delivery_times
        if not unacked:
            times.clear()
            return
        oldest = next(iter(unacked))
        while len(times) > 1 and times[1][0] <= oldest:
            times.popleft()
        if not times:
            return
        timeout_s = self.settings.ack_timeout_ms / 1000.0
        if now - times[0][1] <= timeout_s:
            return
        msg, queue, consumer = unacked[oldest]
        reason = f"delivery {oldest} not acknowledged within {self.settings.ack_timeout_ms} ms"
        log.warning("%s: %s; requeueing", self.name, reason, extra={"conn": self.name})
        if consumer is None:
            del unacked[oldest]
            queue.requeue([msg])
            self.send_error(0, DeliveryAckTimeout(reason, details={"delivery_tag": oldest}))
        else:
            self.server_cancel(consumer, DeliveryAckTimeout.code, reason)
            self.requeue_unacked(consumer)

    # -- publishing ----------------------------------------------------------------

    def _check_publish(self, exchange_name: str, props: dict[str, Any] | None) -> Any:
        ex = self.topology.exchanges.get(exchange_name)
        if ex is None:
            raise NotFound(f"no exchange '{exchange_name}'", details={"exchange": exchange_name})
        if ex.internal:
            raise AccessRefused(f"exchange '{exchange_name}' is internal")
        if props:
            self._check_properties(props)
        return ex

    def _check_properties(self, props: dict[str, Any]) -> None:
        uid = props.get("user_id")
        if uid is not None and uid != self.username:
            raise PreconditionFailed(
                f"user_id property set to {uid!r} but authenticated user was {self.username!r}"
            )
        prio = props.get("priority")
        if prio is not None and (type(prio) is not int or not 0 <= prio <= 255):
            raise InvalidArgument(
                "priority must be an integer 0..255", details={"argument": "priority"}
            )
        exp = props.get("expiration")
        if exp is not None and (type(exp) is not int or exp < 0):
            raise InvalidArgument(
                "expiration must be a non-negative integer (ms)", details={"argument": "expiration"}
            )
        hdrs = props.get("headers")
        if hdrs is not None and not isinstance(hdrs, dict):
            raise InvalidArgument("headers must be a map", details={"argument": "headers"})
        ts = props.get("timestamp")
        if ts is not None and type(ts) is not int:
            raise InvalidArgument(
                "timestamp must be integer epoch milliseconds", details={"argument": "timestamp"}
            )

    def _on_publish_many(self, f: F.PublishMany) -> None:
        bodies = f.bodies
        n = len(bodies)
        if n == 0:
            return
        seq = f.request_id
        props = f.properties
        try:
            ex = self._check_publish(f.exchange, props)
            limit = self.settings.max_message_bytes
            for body in bodies:
                if type(body) is not bytes:
                    raise ProtocolSyntaxError("PublishMany.bodies must be a list of bin")
                if len(body) > limit:
                    raise ContentTooLarge(
                        f"message of {len(body)} bytes exceeds max_message_bytes={limit}"
                    )
        except WharfError as exc:
            self._nack(seq, n, exc)
            return
        self._route(ex, f.exchange, f.routing_key, props, bodies, seq, f.flags)

    def _on_publish(self, f: F.Publish) -> None:
        seq = f.request_id
        props = f.properties
        try:
            ex = self._check_publish(f.exchange, props)
            limit = self.settings.max_message_bytes
            if len(f.body) > limit:
                raise ContentTooLarge(
                    f"message of {len(f.body)} bytes exceeds max_message_bytes={limit}"
                )
        except WharfError as exc:
            self._nack(seq, 1, exc)
            return
        self._route(ex, f.exchange, f.routing_key, props, (f.body,), seq, f.flags)

    def _route(
        self,
        ex: Any,
        exchange: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        seq: int,
        flags: int,
    ) -> None:
        n = len(bodies)
        broker = self.broker
        if broker.alarms and not self._blocked_reading:
            self._block_reading()
        stats = broker.stats
        stats.published += n
        headers = props.get("headers") if props else None
        topology = self.topology
        topics: list[TopicTarget] | None = [] if topology.topic_targets else None
        queues = topology.route(ex, routing_key, headers, topics)
        stored = False
        persistent = props is not None and props.get("persistent") is True
        if queues and persistent:
            store = self.broker.store
            if store is not None and store.failed is not None and any(q.persist for q in queues):
                self._nack(seq, n, ResourceError(f"message store unavailable: {store.failed}"))
                return
        log_sync: LogSyncWait | None = None
        if topics:
            # Appended before the queues get the message: a refused append nacks it
            # without a copy left in any queue.
            try:
                records = routed_records(exchange, routing_key, props, bodies)
                parts = append_routed(self._topics(), topics, records, persistent=persistent)
            except WharfError as exc:
                self._nack(seq, n, exc)
                return
            if persistent:
                wait = self._log_sync_for(parts)
                if seq:  # without a confirm (seq 0) the fsync happens, nothing waits
                    log_sync = wait
        if queues:
            refused = 0
            for q in queues:
                durable, accepted = q.enqueue_many(exchange, routing_key, props, bodies, persistent)
                if durable:
                    stored = True
                if accepted < n:
                    refused = max(refused, n - accepted)
            if refused:
                # x-overflow reject-publish(-dlx): the last ``refused`` did not fit somewhere.
                self._nack(
                    seq + n - refused if seq else 0,
                    refused,
                    ResourceError("queue is full (x-max-length / x-overflow reject-publish)"),
                )
        elif not topics:
            stats.unroutable += n
            if flags & F.FLAG_MANDATORY:
                encode = self._encode
                for i, body in enumerate(bodies):
                    s = seq + i if seq else 0
                    self._send(
                        encode(
                            (
                                F.RETURN,
                                0,
                                s,
                                Unroutable.code,
                                "NO_ROUTE",
                                exchange,
                                routing_key,
                                props,
                                body,
                            )
                        )
                    )
        if seq:
            last = seq + n - 1
            if stored or log_sync is not None or self._confirm_waits:
                # Cumulative confirms: nothing after a message waiting for the disk may
                # be confirmed before it.
                batch = 0
                if stored:
                    store = self.broker.store
                    assert store is not None
                    batch = store.batch
                    self.broker.await_store(self)
                self._confirm_waits.append((seq, last, batch, log_sync))
                return
            if last > self._confirm_up_to:
                self._confirm_up_to = last
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    def store_committed(self, batch: int) -> bool:
        """The store made ``batch`` durable (negative: that batch failed).

        Releases the confirms it covers; returns True while more are waiting.
        """
        if batch < 0:
            self._store_failed_batch = max(self._store_failed_batch, -batch)
        self._release_confirms()
        return bool(self._confirm_waits)

    def _release_confirms(self) -> None:
        """Confirm (or nack) waiting publishes from the front, in order, as far as
        the message store and log-topic fsyncs they wait for are done."""
        waits = self._confirm_waits
        store = self.broker.store
        durable = store.durable_batch if store is not None else 0
        failed = self._store_failed_batch
        up_to = self._confirm_up_to
        while waits:
            first, last, batch, log_sync = waits[0]
            error: WharfError | None = None
            if log_sync is not None:
                if log_sync.pending:
                    break
                error = log_sync.error
            if batch > durable:
                if batch > failed:
                    break
                error = ResourceError("message store write failed")
            waits.popleft()
            if error is not None:
                self._nack(first, last - first + 1, error)
            elif last > up_to:
                up_to = last
        self._confirm_up_to = up_to
        if up_to and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _log_sync_for(self, parts: list[Partition]) -> LogSyncWait:
        """The fsync wait of this loop iteration, covering ``parts`` too."""
        wait = self._log_sync
        if wait is None:
            wait = self._log_sync = LogSyncWait()
            self._loop.call_soon(self._start_log_syncs)
        for part in parts:
            if id(part) not in wait.partitions:
                wait.partitions[id(part)] = part
                wait.pending += 1
        return wait

    def _start_log_syncs(self) -> None:
        wait = self._log_sync
        self._log_sync = None
        if wait is None:
            return

        def synced(fut: asyncio.Future[None]) -> None:
            exc = fut.exception()
            if exc is not None and wait.error is None:
                wait.error = (
                    exc
                    if isinstance(exc, WharfError)
                    else InternalError("log topic fsync failed; the broker logged it")
                )
            wait.pending -= 1
            if not wait.pending and not self.closed:
                self._release_confirms()

        for part in wait.partitions.values():
            part.sync().add_done_callback(synced)

    def _nack(self, seq: int, n: int, exc: WharfError) -> None:
        self.broker.stats.publish_nacked += n
        if not seq:
            self.send_error(0, exc)
            return
        encode = self._encode
        for s in range(seq, seq + n):
            self._send(encode((F.PUBLISH_NACK, 0, s, exc.code, exc.message)))

    # -- delivering ----------------------------------------------------------------

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None:
        tag = self._next_tag
        first = tag + 1
        redelivered = 0
        entries: list[tuple[Any, ...]] = []
        append = entries.append
        if consumer.no_ack:
            for m in batch:
                tag += 1
                dc = m.delivery_count
                if dc > 1:
                    redelivered += 1
                append((tag, dc > 1, dc, m.exchange, m.routing_key, m.properties, m.body))
        else:
            unacked = self._unacked
            queue = consumer.queue
            for m in batch:
                tag += 1
                dc = m.delivery_count
                if dc > 1:
                    redelivered += 1
                unacked[tag] = (m, queue, consumer)
                append((tag, dc > 1, dc, m.exchange, m.routing_key, m.properties, m.body))
            self._delivery_times.append((first, self._loop.time()))
        self._next_tag = tag
        stats = self.broker.stats
        stats.delivered += len(batch)
        stats.redelivered += redelivered
        self._send(self._encode((F.DELIVER, 0, consumer.tag, entries)))

    def server_cancel(self, consumer: Consumer, code: int, reason: str) -> None:
        """The broker ends a consumer (queue deleted, ack timeout)."""
        if self.consumers.get(consumer.tag) is not consumer:
            return
        del self.consumers[consumer.tag]
        consumer.queue.remove_consumer(consumer)
        if not self.closing:
            self._send(self._encode((F.CANCELLED, 0, consumer.tag, code, reason)))

    def requeue_unacked(self, consumer: Consumer | None) -> None:
        """Requeue this connection's unacked deliveries (all, or one consumer's)."""
        unacked = self._unacked
        if not unacked:
            return
        by_queue: dict[Queue, list[Message]] = {}
        if consumer is None:
            items = list(unacked.values())
            unacked.clear()
            for msg, queue, c in items:
                by_queue.setdefault(queue, []).append(msg)
                if c is not None:
                    c.unacked -= 1
        else:
            tags = [t for t, e in unacked.items() if e[2] is consumer]
            for t in tags:
                msg, queue, _ = unacked.pop(t)
                by_queue.setdefault(queue, []).append(msg)
            consumer.unacked = 0
        for queue, msgs in by_queue.items():
            queue.requeue(msgs)

    def relocate(self, old: Segment) -> int:
        """Compaction: copy forward this connection's unacked messages stored in ``old``."""
        moved = 0
        for msg, queue, _ in self._unacked.values():
            if msg.seg is old and not queue.deleted:
                queue.copy_forward(msg)
                moved += 1
        return moved

    # -- acks ------------------------------------------------------------------------

    def _unknown_tag(self, ack_id: int, tag: int) -> None:
        self.send_error(
            ack_id,
            UnknownDeliveryTag(
                f"unknown delivery tag {tag} "
                "(already acked, or never delivered on this connection)",
                details={"delivery_tag": tag},
            ),
        )

    def _settle(self, tags: list[int] | tuple[int, ...], ack_id: int) -> list[Unacked]:
        """Pop unacked entries for ``tags``; reports unknown tags; returns the entries."""
        unacked = self._unacked
        out: list[Unacked] = []
        bad = 0
        for tag in tags:
            entry = unacked.pop(tag, None)
            if entry is None:
                if not bad:
                    self._unknown_tag(ack_id, tag)
                bad += 1
                continue
            out.append(entry)
        return out

    def _tags_up_to(self, tag: int) -> list[int]:
        out = []
        for t in self._unacked:
            if t > tag:
                break
            out.append(t)
        return out

    def _apply_acks(self, entries: list[Unacked]) -> None:
        woken: Queue | None = None
        for msg, queue, consumer in entries:
            if msg.seg is not None:
                queue.forget(msg)
            queue.unacked_count -= 1
            if consumer is not None:
                consumer.unacked -= 1
                if consumer.active and queue is not woken:
                    woken = queue
                    queue.schedule_dispatch()
        self.broker.stats.acked += len(entries)

    def _on_ack_many(self, f: F.AckMany) -> None:
        tags = f.delivery_tags
        for t in tags:
            if type(t) is not int:
                raise ProtocolSyntaxError("AckMany.delivery_tags must be integers")
        self._apply_acks(self._settle(tags, f.request_id))

    def _tags_for(self, ack_id: int, tag: int, multiple: bool) -> list[int] | None:
        """The tags an ACK/NACK settles; None (after answering 407) if there are none."""
        if not multiple:
            return [tag]
        tags = self._tags_up_to(tag) if tag else list(self._unacked)
        if not tags and tag:
            self._unknown_tag(ack_id, tag)
            return None
        return tags

    def _on_ack(self, f: F.Ack) -> None:
        tags = self._tags_for(f.request_id, f.delivery_tag, f.multiple)
        if tags is not None:
            self._apply_acks(self._settle(tags, f.request_id))

    def _release(self, entries: list[Unacked]) -> dict[Queue, list[Message]]:
        """Return the consumers' credit for settled entries; messages grouped by queue."""
        by_queue: dict[Queue, list[Message]] = {}
        for msg, queue, consumer in entries:
            by_queue.setdefault(queue, []).append(msg)
            if consumer is not None:
                consumer.unacked -= 1
                if consumer.active:
                    queue.schedule_dispatch()
        return by_queue

    def _reject(self, entries: list[Unacked], requeue: bool) -> None:
        for queue, msgs in self._release(entries).items():
            if requeue:
                queue.requeue(msgs)
            else:
                queue.reject(msgs, REJECTED)
        if not requeue:
            self.broker.stats.rejected += len(entries)

    def _on_nack(self, f: F.Nack) -> None:
        tags = self._tags_for(f.request_id, f.delivery_tag, f.multiple)
        if tags is None:
            return
        entries = self._settle(tags, f.request_id)
        if f.requeue and f.delay_ms > 0:
            self._delay(entries, f.delay_ms)
            return
        self._reject(entries, f.requeue)

    def _delay(self, entries: list[Unacked], delay_ms: int) -> None:
        """nack with a delay: the messages come back to their queues after ``delay_ms``."""
        for queue, msgs in self._release(entries).items():
            queue.delay(msgs, delay_ms)

    def _on_reject(self, f: F.Reject) -> None:
        self._reject(self._settle([f.delivery_tag], f.request_id), f.requeue)

    def _on_heartbeat(self, f: F.Heartbeat) -> None:
        return

    # -- consumers -----------------------------------------------------------------

    def _on_consume(self, f: F.Consume) -> None:
        queue = self.topology.get_queue(f.queue, self)
        if len(self.consumers) >= self.settings.max_consumers_per_connection:
            raise ResourceError(
                f"max_consumers_per_connection={self.settings.max_consumers_per_connection} reached"
            )
        prio = (f.arguments or {}).get("x-priority", 0)
        if type(prio) is not int:
            raise InvalidArgument(
                "consume argument x-priority must be an integer", details={"argument": "x-priority"}
            )
        if not 0 <= f.prefetch <= MAX_PREFETCH:
            raise InvalidArgument(
                f"prefetch must be 0..{MAX_PREFETCH}", details={"argument": "prefetch"}
            )
        tag = f.consumer_tag or f"ctag-{self.id}.{next(self._ctag_seq)}"
        if len(tag) > MAX_CONSUMER_TAG_CHARS:
            raise InvalidArgument("consumer tag too long")
        if tag in self.consumers:
            raise PreconditionFailed(f"consumer tag '{tag}' already in use on this connection")
        if queue.has_exclusive_consumer():
            raise ResourceLocked(f"queue '{queue.name}' has an exclusive consumer")
        if f.exclusive and queue.consumer_count:
            raise ResourceLocked(
                f"queue '{queue.name}' already has consumers; cannot consume exclusively"
            )
        consumer = Consumer(
            tag, queue, self, f.prefetch, f.no_ack, f.exclusive, f.arguments, f.request_id
        )
        self.consumers[tag] = consumer
        self._ok(f.request_id, {"consumer_tag": tag})
        queue.add_consumer(consumer)

    def _on_cancel(self, f: F.Cancel) -> None:
        consumer = self.consumers.pop(f.consumer_tag, None)
        if consumer is not None:
            # Unacked deliveries stay with the connection and can still be acked.
            consumer.queue.remove_consumer(consumer)
        self._ok(f.request_id, {"consumer_tag": f.consumer_tag})

    def _on_get(self, f: F.Get) -> None:
        queue = self.topology.get_queue(f.queue, self)
        queue.last_used = time.monotonic()
        msg = queue.take()
        if msg is None:
            self._send(self._encode((F.GET_OK, f.request_id, None, 0)))
            return
        self._next_tag += 1
        tag = self._next_tag
        dc = msg.delivery_count
        stats = self.broker.stats
        stats.delivered += 1
        if dc > 1:
            stats.redelivered += 1
        queue.note_delivered()
        if f.no_ack:
            queue.forget(msg)
        else:
            self._unacked[tag] = (msg, queue, None)
            self._delivery_times.append((tag, self._loop.time()))
            queue.unacked_count += 1
        entry = (tag, dc > 1, dc, msg.exchange, msg.routing_key, msg.properties, msg.body)
        self._send(self._encode((F.GET_OK, f.request_id, entry, queue.ready_count)))

    # -- topology ------------------------------------------------------------------

    def _on_exchange_declare(self, f: F.ExchangeDeclare) -> None:
        self.topology.declare_exchange(
            f.name,
            f.type,
            durable=f.durable,
            auto_delete=f.auto_delete,
            internal=f.internal,
            passive=f.passive,
            arguments=f.arguments,
        )
        self._ok(f.request_id)

    def _on_exchange_delete(self, f: F.ExchangeDelete) -> None:
        self.topology.delete_exchange(f.name, f.if_unused)
        self._ok(f.request_id)

    def _on_exchange_bind(self, f: F.ExchangeBind) -> None:
        dest = self.topology.get_exchange(f.destination)
        self.topology.bind(dest, f.source, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_exchange_unbind(self, f: F.ExchangeUnbind) -> None:
        dest = self.topology.get_exchange(f.destination)
        self.topology.unbind(dest, f.source, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_queue_declare(self, f: F.QueueDeclare) -> None:
        existed = f.name in self.topology.queues
        q = self.topology.declare_queue(
            f.name,
            owner=self,
            durable=f.durable,
            exclusive=f.exclusive,
            auto_delete=f.auto_delete,
            passive=f.passive,
            arguments=f.arguments,
        )
        if q.exclusive_owner is self and not existed:
            self.exclusive_queues.append(q)
        self._ok(
            f.request_id,
            {"queue": q.name, "messages": q.ready_count, "consumers": q.consumer_count},
        )

    def _on_queue_bind(self, f: F.QueueBind) -> None:
        q = self.topology.get_queue(f.queue, self)
        self.topology.bind(q, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_queue_unbind(self, f: F.QueueUnbind) -> None:
        q = self.topology.get_queue(f.queue, self)
        self.topology.unbind(q, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_queue_purge(self, f: F.QueuePurge) -> None:
        q = self.topology.get_queue(f.queue, self)
        result = {"messages": q.purge()}
        store = self.broker.store
        if q.persist and store is not None and not store.idle:
            # Answer once the purge's ack records are on disk, like a confirm.
            store.after_commit(lambda: self._ok(f.request_id, result))
            return
        self._ok(f.request_id, result)

    def _on_queue_replay(self, f: F.QueueReplay) -> None:
        if f.limit < 0 or f.max_deaths < 0:
            raise InvalidArgument("limit and max_deaths must be >= 0")
        q = self.topology.get_queue(f.queue, self)
        result = {"moved": self.topology.replay(q, f.target, f.reason, f.limit, f.max_deaths)}
        store = self.broker.store
        if store is not None and not store.idle:
            # Answer once the moves are on disk.
            store.after_commit(lambda: self._ok(f.request_id, result))
            return
        self._ok(f.request_id, result)

    # -- server-side policies ------------------------------------------------------

    def _require_administrator(self) -> None:
        if "administrator" not in self.user_tags:
            raise AccessRefused(f"user '{self.username}' needs the administrator tag for this")

    def _on_policy_set(self, f: F.PolicySet) -> None:
        self._require_administrator()
        policy = make_policy(f.name, f.pattern, f.definition, f.priority, f.apply_to)
        self._ok(f.request_id, {"created": self.topology.set_policy(policy)})

    def _on_policy_delete(self, f: F.PolicyDelete) -> None:
        self._require_administrator()
        self.topology.delete_policy(f.name)
        self._ok(f.request_id)

    def _on_policy_list(self, f: F.PolicyList) -> None:
        self._ok(f.request_id, {"policies": [p.describe() for p in self.topology.policies.all()]})

    def _on_queue_delete(self, f: F.QueueDelete) -> None:
        n = self.topology.delete_queue(f.queue, self, f.if_unused, f.if_empty)
        self._ok(f.request_id, {"messages": n})

    # -- log topics (broker/logs; docs/logs.md) ------------------------------------

    def _topics(self) -> TopicRegistry:
        logs = self.broker.logs
        if logs is None:
            raise CommandInvalid("log topics are not available before the broker has started")
        return logs

    def _logs(self) -> LogRequests:
        requests = self._log_requests
        if requests is None:
            requests = self._log_requests = LogRequests(
                self._topics, self._ok, self.send_error, self.name, self.settings.max_frame_bytes
            )
        return requests

    def _on_topic_create(self, f: F.TopicCreate) -> None:
        self._ok(f.request_id, self._topics().create(f.name, f.partitions, f.config))

    def _on_topic_delete(self, f: F.TopicDelete) -> None:
        self._topics().delete(f.name)
        self._ok(f.request_id)

    def _on_topic_describe(self, f: F.TopicDescribe) -> None:
        self._ok(f.request_id, self._topics().get(f.name).describe())

    def _on_topic_alter(self, f: F.TopicAlter) -> None:
        self._ok(f.request_id, self._topics().alter(f.name, f.partitions, f.config))

    def _on_topic_list(self, f: F.TopicList) -> None:
        self._ok(f.request_id, {"topics": self._topics().describe_all()})

    def _on_produce(self, f: F.Produce) -> None:
        self._logs().produce(f)

    def _on_init_producer(self, f: F.InitProducer) -> None:
        self._logs().init_producer(f)

    def _on_fetch(self, f: F.Fetch) -> None:
        self._logs().fetch(f)

    def _on_fetch_many(self, f: F.FetchMany) -> None:
        self._logs().fetch_many(f)

    def _on_list_offsets(self, f: F.ListOffsets) -> None:
        self._ok(f.request_id, self._topics().list_offsets(f.topic, f.partition, f.timestamp))

    # -- topic bindings (exchanges routing into log topics; docs/logs.md) ----------

    def _on_topic_bind(self, f: F.TopicBind) -> None:
        self._topics()
        self.topology.bind_topic(f.topic, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    def _on_topic_unbind(self, f: F.TopicUnbind) -> None:
        self._topics()
        self.topology.unbind_topic(f.topic, f.exchange, f.routing_key, f.arguments)
        self._ok(f.request_id)

    # -- consumer groups (broker/logs/groups.py; docs/logs.md) ---------------------

    def _groups(self) -> GroupCoordinator:
        groups = self.broker.groups
        if groups is None:
            raise CommandInvalid("consumer groups are not available before the broker has started")
        return groups

    def _ok_when_done(
        self, rid: int, fut: asyncio.Future[Any], result: dict[str, Any] | None = None
    ) -> None:
        """Answer ``rid`` once ``fut`` is done: with its result (or ``result``) or error."""

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if self.closed:
                return
            if exc is None:
                self._ok(rid, result if result is not None else fut.result())
            elif isinstance(exc, WharfError):
                self.send_error(rid, exc)
            else:
                self.send_error(rid, InternalError("internal error; the broker logged it"))

        fut.add_done_callback(done)

    def _on_group_join(self, f: F.GroupJoin) -> None:
        client_id = self.client_properties.get("client_id")
        fut = self._groups().join(
            f.group,
            f.topics,
            f.member_id,
            f.instance_id,
            f.strategy,
            f.session_timeout_ms,
            f.rebalance_timeout_ms,
            f.owned,
            client_id=client_id if isinstance(client_id, str) else "",
            client_host=self.peer_host,
            conn_id=self.id,
        )
        self._ok_when_done(f.request_id, fut)

    def _on_group_heartbeat(self, f: F.GroupHeartbeat) -> None:
        self._groups().heartbeat(f.group, f.member_id, f.generation)
        self._ok(f.request_id)

    def _on_group_leave(self, f: F.GroupLeave) -> None:
        self._groups().leave(f.group, f.member_id)
        self._ok(f.request_id)

    def _on_offset_commit(self, f: F.OffsetCommit) -> None:
        fut = self._groups().commit(f.group, f.member_id, f.generation, f.offsets)
        self._ok_when_done(f.request_id, fut)

    def _on_offset_fetch(self, f: F.OffsetFetch) -> None:
        self._ok(f.request_id, self._groups().fetch_offsets(f.group, f.topics))

    def _on_group_list(self, f: F.GroupList) -> None:
        self._ok(f.request_id, {"groups": self._groups().list()})

    def _on_group_describe(self, f: F.GroupDescribe) -> None:
        self._ok(f.request_id, self._groups().describe(f.group))

    def _on_group_delete(self, f: F.GroupDelete) -> None:
        self._ok_when_done(f.request_id, self._groups().delete(f.group))

    def _on_group_reset_offsets(self, f: F.GroupResetOffsets) -> None:
        result, fut = self._groups().reset_offsets(f.group, f.topic, f.to, f.value, f.partitions)
        self._ok_when_done(f.request_id, fut, result)

    # -- close ---------------------------------------------------------------------

    def _on_close(self, f: F.Close) -> None:
        self._send(self._encode((F.CLOSE_OK, f.request_id)))
        self.closing = True
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _on_close_ok(self, f: F.CloseOk) -> None:
        if self.transport is not None:
            self.transport.close()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "peer": self.peer,
            "user": self.username,
            "heartbeat_s": self.heartbeat_s,
            "consumers": len(self.consumers),
            "unacked": len(self._unacked),
            "client_properties": self.client_properties,
        }
