"""The SDK's asyncio protocol: framing, coalesced writes, dispatch, heartbeats.

One ``ConnectionCore`` per TCP connection.  It owns the socket, the request table
(request id -> future), the publisher-confirm tracker, the consumers by tag and the
pending acks.  Every frame in and out is a typed frame of protocol/frames.py: frames
arrive as msgpack arrays and are turned into their class (``read_frame``) before they
are dispatched; the hot ones (DELIVER, CONFIRM, OK) are handled inline in
``_dispatch``.  Outgoing frames are built from their class, encoded, and appended to a
buffer that is written once per loop iteration.
Nothing here awaits except the helpers that wait for the broker or for the transport
to drain.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple, NoReturn, Protocol, cast

from wharf.protocol import frames as F
from wharf.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_BATCH_ITEMS,
    PREAUTH_MAX_FRAME_BYTES,
    FrameDecoder,
    FrameEncoder,
)
from wharf.protocol.errors import (
    AccessRefused,
    ConnectionLost,
    FrameError,
    HeartbeatTimeout,
    InvalidArgument,
    NotImplementedByBroker,
    ProtocolMismatch,
    WharfError,
    error_from_code,
)

from .confirms import ConfirmTracker
from .message import messages_from_entries
from .scram import (
    INVALID_CREDENTIALS,
    PLAIN,
    PROOF_REFUSED_PLAIN_OFFERED,
    SCRAM,
    SCRAM_UPGRADE_HINT,
    ScramLogin,
    choose_mechanism,
)
from .state import ENDED, Event, InvalidTransition, State, next_state
from .tls import closed_after_handshake, connect_error, plain_to_tls_hint, tls_failure
from .url import ConnectParams

log = logging.getLogger("wharf.client")

# Frames the broker sends us can be large (deliver-many batches).
MAX_RECEIVE_FRAME_BYTES: Final = 256 * 1024 * 1024
# Receive buffer capacity kept between frames (fetch answers are ~1 MiB per partition).
RECEIVE_BUFFER_KEEP_BYTES: Final = 8 * 1024 * 1024
# This many bytes waiting for the next flush are written at once: the broker starts on
# a big frame (a produced batch) while the next one is being encoded.
FLUSH_AT_BYTES: Final = 64 * 1024
# Above this many bytes waiting for the next flush, publishers write out at once and
# then wait for the transport to drain, so the SDK never buffers without bound.
MAX_PENDING_WRITE_BYTES: Final = 1024 * 1024
TRANSPORT_HIGH_WATER_BYTES: Final = 4 * 1024 * 1024
TRANSPORT_LOW_WATER_BYTES: Final = 1024 * 1024
# Heartbeat ticks run every heartbeat/2; this many silent ticks = 2 heartbeats.
SILENT_TICKS_BEFORE_TIMEOUT: Final = 4

_HEARTBEAT_FRAME: Final = FrameEncoder().encode_array(F.as_array(F.Heartbeat()))
# Sent right after the handshake: a HEARTBEAT the broker ignores (before AUTH too; the
# extra field is ignored as SPEC section 12 says).  It carries CR LF CR LF so that an
# HTTP server on this port sees the end of a request head and answers at once (400)
# instead of waiting for more; that answer is then reported as "this port speaks HTTP".
_PORT_PROBE_FRAME: Final = FrameEncoder().encode_array((*F.as_array(F.Heartbeat()), "\r\n\r\n"))
# What an HTTP/1.x server answers starts with this.  As a Wharf frame length it would be
# over 1 GB, so a Wharf broker never sends it.
HTTP_RESPONSE_PREFIX: Final = b"HTTP"
WHARF_DEFAULT_PORT: Final = 5680


# What answers a request: OK, or GET_OK for a GET (an ERROR is raised instead).
Reply = F.Ok | F.GetOk
# Called with the answer frame of a request, or with the error that ended it.
ReplyCallback = Callable[[Reply | None, WharfError | None], None]
# A request frame built with this request id gets a fresh one from the core.
NEW_REQUEST: Final = 0


def result_of(reply: Reply) -> dict[str, Any]:
    """The result map of an OK answer (empty when it has none, or for a GET_OK)."""
    result = reply.result if type(reply) is F.Ok else None
    return result if isinstance(result, dict) else {}


class ConfirmDuplicates(NamedTuple):
    """CONFIRM with its optional trailing field: the covered seqs that were duplicates
    (a queue's x-dedup-window-ms)."""

    request_id: int
    up_to: int
    duplicates: list[Any]


def read_frame(raw: list[Any]) -> F.Frame | ConfirmDuplicates | None:
    """The typed frame for a decoded array from the broker (None: a type this SDK does
    not know, ignored for forward compatibility).  Raises ``ProtocolSyntaxError`` for a
    malformed frame.

    DELIVER and CONFIRM take a fast path: ``F.parse`` checks each delivery entry (about
    0.4 us each, more than building its ``Message``), and ``messages_from_entries``
    unpacks every entry anyway, failing the connection on a malformed one.
    """
    ftype = raw[0]
    if ftype == F.DELIVER and len(raw) >= 4 and type(raw[2]) is str and type(raw[3]) is list:
        return F.Deliver._make(raw[1:4])
    if ftype == F.CONFIRM and len(raw) >= 3 and type(raw[2]) is int:
        if len(raw) > 3 and isinstance(raw[3], (list, tuple)):
            return ConfirmDuplicates(raw[1], raw[2], list(raw[3]))
        return F.Confirm._make(raw[1:3])
    try:
        return F.parse(raw)
    except NotImplementedByBroker:
        return None


def clone_error(exc: WharfError) -> WharfError:
    """A fresh exception equal to ``exc`` (raising one instance twice piles up tracebacks)."""
    return error_from_code(exc.code, exc.message, exc.details)


class DeliverySink(Protocol):
    """What the core needs from a consumer (``Consumer`` and the RPC reply consumer)."""

    def on_deliver(self, entries: list[Any]) -> None: ...

    def on_cancelled(self, error: WharfError) -> None: ...

    def on_ack_error(self, error: WharfError) -> None: ...

    def on_connection_lost(self, error: WharfError, resumable: bool) -> None:
        """The connection is gone.  ``resumable``: the ``Connection`` reconnects and
        will resume this consumer on the new connection (``reconnect=True``)."""


class AckChannel:
    """Settles deliveries for one ack id (a consumer's CONSUME request id, or 0 for GET).

    Plain acks are collected and sent as one ACK_MANY per loop iteration.
    """

    __slots__ = ("ack_id", "tags", "_core")

    def __init__(self, core: ConnectionCore, ack_id: int) -> None:
        self.ack_id = ack_id
        self.tags: list[int] = []
        self._core = core

    def ack(self, tag: int) -> None:
        tags = self.tags
        if not tags:
            self._core.acks_pending(self)
        tags.append(tag)

    def settle(self, frame: F.Ack | F.Nack | F.Reject) -> None:
        """Queue an ACK(multiple)/NACK/REJECT frame, after any pending acks."""
        self._core.send_settle(frame)

    @property
    def core(self) -> ConnectionCore:
        """The connection (one TCP session) the deliveries came on: tags mean
        something only there."""
        return self._core


class ConnectionCore(asyncio.BufferedProtocol):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, request_ids: Iterator[int] | None = None
    ) -> None:
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        # The first bytes from the server, until there are enough to tell an HTTP
        # answer from a Wharf frame (None once decided).
        self._preamble: bytearray | None = bytearray()
        self._preamble_view: memoryview | None = None
        self._decoder = FrameDecoder(
            MAX_RECEIVE_FRAME_BYTES, use_list=True, retain_bytes=RECEIVE_BUFFER_KEEP_BYTES
        )
        self.encode = FrameEncoder().encode_array
        self._wbuf: list[bytes] = []
        self._wbuf_bytes = 0
        self._flush_scheduled = False
        self._ack_dirty: list[AckChannel] = []
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Shared by every connection a reconnecting ``Connection`` makes, so request
        # ids, ack ids and SDK consumer tags never repeat across reconnects.
        self._rids = request_ids if request_ids is not None else itertools.count(1)
        # None = a request whose answer nobody waits for.
        self._pending: dict[int, asyncio.Future[Reply] | ReplyCallback | None] = {}
        self.confirms = ConfirmTracker()
        self._consumers: dict[str, DeliverySink] = {}
        self._sinks_by_ack_id: dict[int, DeliverySink] = {}
        self._orphan_tags: set[str] = set()
        self.get_channel = AckChannel(self, 0)
        # Called with an asynchronous error that belongs to no waiting call: a refused
        # fire-and-forget publish (ERROR id 0), a returned fire-and-forget mandatory
        # message (RETURN seq 0), a failed settle of a GET message (ack id 0).  It is
        # never raised from a later, unrelated call (docs/sdk.md, "Asynchronous errors").
        self.on_async_error: Callable[[WharfError], None] | None = None
        # The lifecycle (state.py): changed only by _advance().
        self.state = State.CONNECTING
        # Waiters: the handshake coroutine for HELLO/AUTH_OK, close() for CLOSE_OK.
        self._handshake: asyncio.Future[F.Hello | F.AuthOk | F.AuthChallenge] | None = (
            loop.create_future()
        )
        self._close_ok: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] = loop.create_future()
        # Why the connection ended (set when the state becomes CLOSED or FAILED); every
        # later call raises it.
        self.closed_error: WharfError | None = None
        self.heartbeat_s = 0
        self._heartbeat: asyncio.TimerHandle | None = None
        self._received = False
        self._wrote = False
        self._silent_ticks = 0
        self.connection_id = ""
        self.server_properties: dict[str, Any] = {}
        self.server_name = ""
        self.offered_mechanisms: list[str] = []  # HELLO's auth mechanisms
        self.max_frame_bytes = 0
        self.max_message_bytes = 0
        # The broker's resource alarm while it blocks publishers (None when not blocked).
        self.blocked: str | None = None
        self.blocked_listeners: list[Callable[[str | None], None]] = []
        # Told of each THROTTLED frame: (direction, milliseconds) of a byte-rate quota.
        self.throttle_listeners: list[Callable[[str, int], None]] = []
        # Set by a ``Connection`` with reconnect=True (and cleared by its close()): a
        # loss is then reported as ConnectionLost whatever the cause, consumers are
        # suspended rather than ended, and settling a delivery of this dead connection
        # is a no-op (the broker has requeued it).
        self.recoverable = False
        # Called once, at the end of fail(): the owning Connection reacts to the loss.
        self.on_fail: Callable[[ConnectionCore, WharfError], None] | None = None
        self.lost_cause: Exception | None = None

    # -- state -----------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """CLOSED or FAILED: nothing more can be done on this connection."""
        return self.state in ENDED

    def _advance(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    def _raise_ended(self) -> NoReturn:
        error = self.closed_error
        assert error is not None
        raise clone_error(error)

    # -- asyncio.BufferedProtocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(TRANSPORT_HIGH_WATER_BYTES, TRANSPORT_LOW_WATER_BYTES)
        transport.write(F.HANDSHAKE + _PORT_PROBE_FRAME)
        self._advance(Event.TRANSPORT_UP)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Bytes are received straight into the decoder's buffer.
        view = self._decoder.get_buffer(sizehint)
        if self._preamble is not None:
            self._preamble_view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self.state in ENDED:
            return
        self._received = True
        view = self._preamble_view
        if view is not None and self._wrong_protocol(view[:nbytes]):
            return
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except WharfError as exc:
            self.fail(exc)
            return
        self._dispatch(frames)

    def data_received(self, data: bytes) -> None:
        """Bytes from the broker handed over whole (the same as ``buffer_updated``)."""
        if self.state in ENDED:
            return
        self._received = True
        if self._preamble is not None and self._wrong_protocol(data):
            return
        try:
            frames = self._decoder.feed(data)
        except WharfError as exc:
            self.fail(exc)
            return
        self._dispatch(frames)

    def _dispatch(self, frames: list[Any]) -> None:
        try:
            for raw in frames:
                frame = read_frame(raw)
                if type(frame) is F.Deliver:
                    sink = self._consumers.get(frame.consumer_tag)
                    if sink is not None:
                        sink.on_deliver(frame.deliveries)
                    else:
                        self._orphan_delivery(frame)
                elif type(frame) is F.Confirm:
                    self.confirms.confirm(frame.up_to)
                elif isinstance(frame, ConfirmDuplicates):
                    self.confirms.duplicates(frame.duplicates)
                    self.confirms.confirm(frame.up_to)
                elif type(frame) is F.Ok or type(frame) is F.GetOk:
                    waiter = self._pending.pop(frame.request_id, None)
                    if isinstance(waiter, asyncio.Future):
                        if not waiter.done():
                            waiter.set_result(frame)
                    elif waiter is not None:
                        _answer(waiter, frame)
                elif frame is not None:
                    self._dispatch_other(frame)
                    if self.state in ENDED:
                        return
        except InvalidTransition as exc:  # e.g. a second HELLO: the broker is confused
            self.fail(FrameError(f"unexpected frame from the broker: {exc}"))
        except Exception as exc:  # a malformed frame from the broker: nothing sane to do
            log.exception("wharf: cannot handle a frame from the broker")
            self.fail(FrameError(f"malformed frame from the broker: {exc!r}"))

    def _wrong_protocol(self, data: bytes | memoryview) -> bool:
        """Look at the first bytes the server sent: an HTTP answer fails the connection
        at once with a clear error instead of a confusing frame error or a timeout."""
        preamble = self._preamble
        assert preamble is not None
        preamble += data[: len(HTTP_RESPONSE_PREFIX) - len(preamble)]
        if len(preamble) < len(HTTP_RESPONSE_PREFIX):
            return False
        self._preamble = None
        self._preamble_view = None
        if preamble != HTTP_RESPONSE_PREFIX:
            return False
        self.fail(
            ProtocolMismatch(
                f"this port speaks HTTP; the Wharf port is {WHARF_DEFAULT_PORT} "
                "(unless the broker was configured otherwise)",
                details={"speaks": "http"},
            )
        )
        return True

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_cause = exc  # a TLS alert here gets a clearer error (open_core)
        reason = f": {exc}" if exc is not None else " (closed by the broker)"
        self.fail(ConnectionLost(f"connection to the broker lost{reason}"))
        self._transport = None
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain_waiters()

    # -- dispatch ------------------------------------------------------------------

    def _dispatch_other(self, frame: F.Frame) -> None:
        if type(frame) is F.PublishNack:
            self.confirms.nack(frame.seq, frame.code, frame.message)
        elif type(frame) is F.Return:
            if frame.seq:
                self.confirms.returned(
                    frame.seq, frame.code, frame.reason, frame.exchange, frame.routing_key,
                    frame.properties, frame.body,
                )  # fmt: skip
            else:
                self._async_error(
                    error_from_code(
                        frame.code,
                        f"message to exchange '{frame.exchange}' with routing key "
                        f"'{frame.routing_key}' was returned: {frame.reason}",
                        {
                            "exchange": frame.exchange,
                            "routing_key": frame.routing_key,
                            "properties": frame.properties,
                            "body": frame.body,
                        },
                    )
                )
        elif type(frame) is F.Error:
            self._on_error(frame)
        elif type(frame) is F.Cancelled:
            tag = frame.consumer_tag
            sink = self._consumers.pop(tag, None)
            if sink is not None:
                self._drop_ack_id(sink)
                sink.on_cancelled(
                    error_from_code(
                        frame.code,
                        f"consumer '{tag}' cancelled by the broker: {frame.reason}",
                        {"consumer_tag": tag},
                    )
                )
        elif type(frame) is F.Heartbeat:
            pass
        elif type(frame) is F.Blocked or type(frame) is F.Unblocked:
            reason = frame.reason if type(frame) is F.Blocked else None
            self.blocked = reason
            if reason is None:
                log.info("wharf: broker resource alarm cleared; publishing resumes")
            else:
                log.warning("wharf: broker blocked publishing (resource alarm: %s)", reason)
            for callback in list(self.blocked_listeners):
                try:
                    callback(reason)
                except Exception:
                    log.exception("wharf: blocked/unblocked listener failed")
        elif type(frame) is F.Throttled:
            for throttled in list(self.throttle_listeners):
                try:
                    throttled(frame.direction, frame.throttle_ms)
                except Exception:
                    log.exception("wharf: throttled listener failed")
        elif type(frame) is F.Hello or type(frame) is F.AuthOk or type(frame) is F.AuthChallenge:
            if type(frame) is not F.AuthChallenge:  # a challenge is a step within AUTHENTICATING
                self._advance(Event.HELLO if type(frame) is F.Hello else Event.AUTH_OK)
            elif self.state is not State.AUTHENTICATING:
                raise InvalidTransition(self.state, Event.AUTH_OK)
            fut = self._handshake
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif type(frame) is F.Close:
            self.send_frame(F.CloseOk(frame.request_id))
            self.flush()
            if self.state is State.CLOSING:  # both sides closed at once
                self._end(ConnectionLost("the connection was closed by the client"), Event.CLOSED)
            elif frame.code:
                error = error_from_code(frame.code, f"broker closed the connection: {frame.reason}")
            else:
                error = ConnectionLost(
                    f"broker closed the connection: {frame.reason or 'no reason'}"
                )
            self.fail(error)
        elif type(frame) is F.CloseOk:
            self._closed_ok()
        # Other frame types are not sent to clients: ignored, as unknown ones are.

    def _closed_ok(self) -> None:
        close_ok = self._close_ok
        if close_ok is not None and not close_ok.done():
            close_ok.set_result(None)

    def _on_error(self, frame: F.Error) -> None:
        rid = frame.request_id
        error = error_from_code(frame.code, frame.message, frame.details)
        if frame.fatal:
            self.fail(error)
            return
        if rid in self._pending:
            _settle(self._pending.pop(rid), error)
            return
        if self.state is State.HANDSHAKING or self.state is State.AUTHENTICATING:
            # e.g. a refused AUTH not flagged fatal
            self.fail(error)
            return
        sink = self._sinks_by_ack_id.get(rid)
        if sink is not None:
            sink.on_ack_error(error)  # the consumer's own: raised from its iterator
        else:
            self._async_error(error)

    def _async_error(self, error: WharfError) -> None:
        handler = self.on_async_error
        if handler is None:
            log.warning("wharf: asynchronous error from the broker: %s", error)
            return
        try:
            handler(error)
        except Exception:
            log.exception("wharf: asynchronous error handler failed")

    def _orphan_delivery(self, frame: F.Deliver) -> None:
        """Deliveries for a consumer we do not know (its CONSUME was abandoned):
        requeue them and cancel that consumer once."""
        for message in messages_from_entries(frame.deliveries, None):
            self.send_frame(F.Nack(0, message.delivery_tag, multiple=False, requeue=True))
        tag = frame.consumer_tag
        if tag not in self._orphan_tags:
            self._orphan_tags.add(tag)
            rid = next(self._rids)
            self._pending[rid] = None
            self.send_frame(F.Cancel(rid, tag))

    # -- consumers -----------------------------------------------------------------

    def add_consumer(self, tag: str, ack_id: int, sink: DeliverySink) -> None:
        self._consumers[tag] = sink
        self._sinks_by_ack_id[ack_id] = sink

    def has_consumer(self, tag: str) -> bool:
        return tag in self._consumers

    def rename_consumer(self, old_tag: str, new_tag: str) -> None:
        sink = self._consumers.pop(old_tag, None)
        if sink is not None:
            self._consumers[new_tag] = sink

    def remove_consumer(self, tag: str, ack_id: int) -> None:
        self._consumers.pop(tag, None)
        self._sinks_by_ack_id.pop(ack_id, None)

    def _drop_ack_id(self, sink: DeliverySink) -> None:
        for ack_id, s in list(self._sinks_by_ack_id.items()):
            if s is sink:
                del self._sinks_by_ack_id[ack_id]

    # -- writing -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue an encoded frame for this loop iteration's write (acks go first);
        written at once when ``FLUSH_AT_BYTES`` are waiting."""
        if self._ack_dirty:
            self._encode_acks()
        self._wbuf.append(data)
        self._wbuf_bytes += len(data)
        if self._wbuf_bytes >= FLUSH_AT_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def send_frame(self, frame: F.Frame) -> None:
        """Encode ``frame`` and queue it (``send``)."""
        self.send(self.encode(F.as_array(frame)))

    def send_settle(self, frame: F.Ack | F.Nack | F.Reject) -> None:
        if self.state in ENDED:
            if self.recoverable:
                return  # a delivery of a lost connection: the broker requeued it
            self._raise_ended()
        self.send_frame(frame)

    def acks_pending(self, channel: AckChannel) -> None:
        if self.state in ENDED:
            if self.recoverable:
                channel.tags.clear()
                return
            self._raise_ended()
        self._ack_dirty.append(channel)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _encode_acks(self) -> None:
        encode = self.encode
        wbuf = self._wbuf
        for channel in self._ack_dirty:
            tags = channel.tags
            if not tags:
                continue
            # The broker decodes at most MAX_BATCH_ITEMS tags per frame.
            for start in range(0, len(tags), MAX_BATCH_ITEMS):
                frame = F.AckMany(channel.ack_id, tags[start : start + MAX_BATCH_ITEMS])
                data = encode(F.as_array(frame))
                wbuf.append(data)
                self._wbuf_bytes += len(data)
            tags.clear()
        self._ack_dirty.clear()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._ack_dirty:
            self._encode_acks()
        buf = self._wbuf
        if not buf:
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
            self._wrote = True
        buf.clear()
        self._wbuf_bytes = 0

    def must_wait_writable(self) -> bool:
        return self._paused or self._wbuf_bytes > MAX_PENDING_WRITE_BYTES

    async def wait_writable(self) -> None:
        """Backpressure: write out a full buffer, then wait while the transport is paused."""
        if self._wbuf_bytes > MAX_PENDING_WRITE_BYTES:
            self.flush()
        while self._paused and self.state not in ENDED:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.state in ENDED:
            self._raise_ended()

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        self._drain_waiters = []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- requests ------------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise the connection's close error once it has ended."""
        if self.state in ENDED:
            self._raise_ended()

    def new_request_id(self) -> int:
        return next(self._rids)

    def start_request(self, frame: F.Frame) -> tuple[int, asyncio.Future[Reply]]:
        """Send a request now; returns its id and the future of the answer frame.
        A ``request_id`` of ``NEW_REQUEST`` is replaced by a fresh id."""
        if self.state in ENDED:
            self._raise_ended()
        rid = frame.request_id
        if rid == NEW_REQUEST:
            rid = next(self._rids)
            frame = frame._replace(request_id=rid)
        fut: asyncio.Future[Reply] = self.loop.create_future()
        self._pending[rid] = fut
        self.send_frame(frame)
        return rid, fut

    def start_request_cb(self, frame: F.Frame, callback: ReplyCallback) -> int:
        """Send a request now (under a fresh id); ``callback`` gets its answer as soon
        as it is read (no future, no extra loop iteration), or the error that ended it.
        Returns its id."""
        if self.state in ENDED:
            self._raise_ended()
        rid = next(self._rids)
        self._pending[rid] = callback
        self.send_frame(frame._replace(request_id=rid))
        return rid

    async def request(self, frame: F.Frame) -> Reply:
        """Send a request (under a fresh id) and wait for its OK/GET_OK (ERROR raises)."""
        self.check_usable()
        if self._paused or self._wbuf_bytes > MAX_PENDING_WRITE_BYTES:
            await self.wait_writable()
        rid, fut = self.start_request(frame._replace(request_id=next(self._rids)))
        try:
            return await fut
        except asyncio.CancelledError:
            self.abandon_request(rid)
            raise

    def abandon_request(self, rid: int) -> None:
        """Nobody waits for this request any more: drop its answer when it comes."""
        if rid in self._pending:
            self._pending[rid] = None

    # -- handshake, heartbeats, close ----------------------------------------------

    async def handshake(
        self,
        username: str,
        password: str,
        heartbeat_s: int,
        client_properties: dict[str, Any],
        auth_mechanism: str | None = None,
    ) -> None:
        """HELLO, then log in with ``auth_mechanism`` or the best one the broker offers
        (scram.py); raises AccessRefused (with PROOF_REFUSED_PLAIN_OFFERED in its details
        for a refused SCRAM proof)."""
        assert self._handshake is not None
        hello = await self._handshake
        assert type(hello) is F.Hello
        version = hello.version
        mechanisms = hello.mechanisms
        max_frame = hello.max_frame_bytes
        max_message = hello.max_message_bytes
        if version != F.PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"broker speaks protocol version {version}; this SDK speaks {F.PROTOCOL_VERSION}"
            )
        mechanism = choose_mechanism(mechanisms, auth_mechanism, password)
        self.offered_mechanisms = list(mechanisms)
        self.server_name = hello.server
        # A broker that states no limit (0) gets the codec's default frame limit.
        self.max_frame_bytes = max_frame if max_frame > 0 else DEFAULT_MAX_FRAME_BYTES
        self.max_message_bytes = max_message if max_message > 0 else self.max_frame_bytes
        self._handshake = self.loop.create_future()
        rid = next(self._rids)
        scram: ScramLogin | None = None
        if mechanism == SCRAM:
            scram = ScramLogin(username, password)
            initial = scram.client_first()
        else:
            initial = password if mechanism == PLAIN else ""
        auth = self.encode(
            F.as_array(F.Auth(rid, mechanism, username, initial, heartbeat_s, client_properties))
        )
        if len(auth) - 4 > PREAUTH_MAX_FRAME_BYTES:
            # The broker refuses (508) any frame over this size before authentication.
            raise InvalidArgument(
                f"credentials and client properties take {len(auth) - 4} bytes; a broker "
                f"accepts at most {PREAUTH_MAX_FRAME_BYTES} before authentication"
            )
        self.send(auth)
        auth_ok = await self._handshake
        if scram is not None:
            auth_ok = await self._scram_rounds(rid, scram, auth_ok)
        assert type(auth_ok) is F.AuthOk
        self._handshake = None
        self.connection_id = auth_ok.connection_id
        self.heartbeat_s = auth_ok.heartbeat_s
        self.server_properties = auth_ok.server_properties or {}
        if self.heartbeat_s > 0:
            self._heartbeat = self.loop.call_later(self.heartbeat_s / 2, self._heartbeat_tick)

    async def _scram_rounds(
        self, rid: int, scram: ScramLogin, challenge: F.Hello | F.AuthOk | F.AuthChallenge
    ) -> F.AuthOk:
        """SCRAM after AUTH: answer the challenge, then check the broker's signature."""
        if type(challenge) is not F.AuthChallenge:
            raise ProtocolMismatch("the broker did not answer SCRAM-SHA-256 with a challenge")
        client_final = scram.client_final(challenge.data)
        self._handshake = self.loop.create_future()
        self.send_frame(F.AuthResponse(rid, client_final))
        self.flush()
        try:
            auth_ok = await self._handshake
        except AccessRefused as exc:
            plain_offered = PLAIN in self.offered_mechanisms
            details = {**exc.details, PROOF_REFUSED_PLAIN_OFFERED: plain_offered}
            raise AccessRefused(exc.message, details=details) from None
        if type(auth_ok) is not F.AuthOk:
            raise ProtocolMismatch("the broker sent a second SCRAM challenge")
        scram.check_server_final(auth_ok.server_final)
        return auth_ok

    def _heartbeat_tick(self) -> None:
        if self.state in ENDED:
            return
        if self._received:
            self._received = False
            self._silent_ticks = 0
        else:
            self._silent_ticks += 1
            if self._silent_ticks >= SILENT_TICKS_BEFORE_TIMEOUT:
                self.fail(
                    HeartbeatTimeout(
                        f"no frame from the broker for {2 * self.heartbeat_s} s "
                        f"(heartbeat {self.heartbeat_s} s)"
                    )
                )
                return
        if not self._wrote and not self._wbuf and self._transport is not None:
            # Written directly, so it does not count as traffic for the next tick.
            self._transport.write(_HEARTBEAT_FRAME)
        self._wrote = False
        self._heartbeat = self.loop.call_later(self.heartbeat_s / 2, self._heartbeat_tick)

    async def close(self, timeout_s: float) -> None:
        """Send CLOSE, wait for CLOSE_OK and the socket to close (one timeout budget).
        Idempotent; on a connection that is not open yet, just closes the socket."""
        if self.state is State.OPEN:
            self._close_ok = self.loop.create_future()
            self._advance(Event.CLOSE_SENT)
            self.send_frame(F.Close(next(self._rids), 0, "client closed the connection"))
        closed = ConnectionLost("the connection was closed by the client")
        try:
            async with asyncio.timeout(timeout_s):
                if self._close_ok is not None:
                    await asyncio.shield(self._close_ok)
                self._end(closed, Event.CLOSED)
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.abort(closed, Event.CLOSED)

    def abort(self, error: WharfError, event: Event = Event.FAILED) -> None:
        """End the connection (``fail``) and drop the socket without a goodbye."""
        self._end(error, event)
        if self._transport is not None:
            self._transport.abort()

    def fail(self, error: WharfError) -> None:
        """The connection is unusable: close the socket, fail everything waiting on it."""
        self._end(error, Event.FAILED)

    def _end(self, error: WharfError, event: Event) -> None:
        """Move to CLOSED or FAILED (``event``) with ``error`` as the reason, close the
        socket and fail everything waiting on it.  A no-op once ended."""
        if self.state in ENDED:
            return
        self._advance(event)
        resumable = self.recoverable
        if resumable and error.code != ConnectionLost.code:
            # With reconnect, callers see one retriable error whatever ended the
            # connection; the cause is kept in the details.
            error = ConnectionLost(
                f"connection to the broker lost: {error}",
                details={"cause_code": error.code, "cause": error.message},
            )
        self.closed_error = error
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self.flush()  # a CLOSE_OK we owe, or our CLOSE, goes out before the socket closes
        for channel in self._ack_dirty:
            channel.tags.clear()
        self._ack_dirty.clear()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(clone_error(error))
        if self._close_ok is not None and not self._close_ok.done():
            self._close_ok.set_result(None)
        pending = list(self._pending.values())
        self._pending.clear()
        for waiter in pending:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(clone_error(error))
            elif waiter is not None:
                # Like a future's callbacks: after this loss is fully handled (on_fail).
                self.loop.call_soon(_settle, waiter, clone_error(error))
        self.confirms.fail_all(error)
        sinks = list(self._consumers.values())
        sinks.extend(s for s in self._sinks_by_ack_id.values() if s not in sinks)
        self._consumers.clear()
        self._sinks_by_ack_id.clear()
        for sink in sinks:
            sink.on_connection_lost(clone_error(error), resumable)
        self._wake_drain_waiters()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        elif self._transport is None and not self._lost.done():
            self._lost.set_result(None)
        on_fail = self.on_fail
        if on_fail is not None:
            try:
                on_fail(self, error)
            except Exception:
                log.exception("wharf: connection-loss handler failed")


def _answer(callback: ReplyCallback, frame: Reply) -> None:
    try:
        callback(frame, None)
    except Exception:
        log.exception("wharf: a request's answer handler failed")


def _settle(waiter: asyncio.Future[Reply] | ReplyCallback | None, error: WharfError) -> None:
    """End a request with ``error``."""
    if waiter is None:
        return
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_exception(error)
        return
    try:
        waiter(None, error)
    except Exception:
        log.exception("wharf: a request's error handler failed")


async def open_core(
    params: ConnectParams,
    heartbeat_s: int,
    timeout: float,  # noqa: ASYNC109 (the whole call's budget)
    client_properties: dict[str, Any],
    request_ids: Iterator[int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionCore:
    """``_open_core``; when SCRAM-SHA-256 was chosen (not forced) and its proof refused,
    once more with PLAIN if the broker offered it there (over TLS or from loopback): the
    user may have no SCRAM credential yet, which PLAIN gives it.  Otherwise a refused
    proof says what to do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # one budget for both attempts
    try:
        return await _open_core(
            params, heartbeat_s, timeout, client_properties, request_ids, ssl_context
        )
    except AccessRefused as exc:
        if PROOF_REFUSED_PLAIN_OFFERED not in exc.details or exc.message != INVALID_CREDENTIALS:
            raise  # not a refused proof, or e.g. a loopback-only user
        if params.auth_mechanism is None and exc.details[PROOF_REFUSED_PLAIN_OFFERED]:
            plain = params._replace(auth_mechanism=PLAIN)
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"connecting to the broker took over {timeout} s") from None
            return await _open_core(
                plain, heartbeat_s, left, client_properties, request_ids, ssl_context
            )
        raise AccessRefused(f"{exc.message} (SCRAM-SHA-256; {SCRAM_UPGRADE_HINT})") from None


async def _open_core(
    params: ConnectParams,
    heartbeat_s: int,
    timeout: float,  # noqa: ASYNC109 (the whole call's budget)
    client_properties: dict[str, Any],
    request_ids: Iterator[int] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionCore:
    """TCP connect, TLS handshake (with ``ssl_context``), Wharf handshake and
    authentication, all within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    core: ConnectionCore | None = None
    where = f"{params.host}:{params.port}"
    try:
        async with asyncio.timeout(timeout):
            try:
                _, core = await loop.create_connection(
                    lambda: ConnectionCore(loop, request_ids),
                    params.host,
                    params.port,
                    ssl=ssl_context,
                    server_hostname=params.host if ssl_context is not None else None,
                )
            except OSError as exc:
                tls_error = connect_error(exc, where, params.host)
                if tls_error is not None:
                    raise tls_error from None
                raise ConnectionLost(
                    f"cannot connect to the broker at {where}: {exc.strerror or exc}",
                    details={"host": params.host, "port": params.port},
                ) from exc
            try:
                await core.handshake(
                    params.username,
                    params.password,
                    heartbeat_s,
                    client_properties,
                    params.auth_mechanism,
                )
            except ProtocolMismatch as exc:
                if exc.details.get("speaks") != "http":
                    raise
                raise ProtocolMismatch(f"{where}: {exc.message}", details=exc.details) from None
            except ConnectionLost:
                cause = core.lost_cause
                if isinstance(cause, ssl.SSLError):  # e.g. the broker refused our certificate
                    raise tls_failure(cause, where) from None
                if not core._received:  # closed before the broker's first frame
                    if ssl_context is None:
                        raise plain_to_tls_hint(where) from None
                    raise closed_after_handshake(where) from None
                raise
    except TimeoutError:
        if core is not None:
            core.abort(ConnectionLost("connect timed out"))
        raise TimeoutError(f"connecting to the broker at {where} took over {timeout} s") from None
    except BaseException:
        if core is not None:
            core.abort(ConnectionLost("connect failed"))
        raise
    return core
