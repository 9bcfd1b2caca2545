"""One client connection: handshake, authentication, heartbeats, flow control, dispatch.

A connection owns its socket, its lifecycle state (lifecycle.py), its consumers, its
session's deliveries (core/deliveries.py) and its publisher confirms (confirms.py, a
``Confirms`` object it owns).  Frames are decoded in ``data_received``, parsed into
their typed classes (protocol/frames.py) and handled synchronously; outgoing frames are
built from their typed classes too, buffered, and written once per event-loop iteration.

The hot paths (publish, deliver, ack) are here; the handlers of exchange, queue and
policy frames (topology_frames.py) and of log-topic and consumer-group frames
(log_frames.py) come from two mixins, whose handlers join the dispatch table.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, cast

from wharf.protocol import frames as F
from wharf.protocol.codec import PREAUTH_MAX_FRAME_BYTES, FrameDecoder, FrameEncoder
from wharf.protocol.errors import (
    AccessRefused,
    CommandInvalid,
    ConnectionForced,
    DeliveryAckTimeout,
    HeartbeatTimeout,
    InternalError,
    InvalidArgument,
    PreconditionFailed,
    ProtocolSyntaxError,
    ResourceError,
    UnknownDeliveryTag,
    Unroutable,
    WharfError,
)

from ...core.access import DEFAULT_VHOST, Actor
from ...core.clients import describe_channel, next_connection_id
from ...core.deliveries import Deliveries, Unacked
from ...core.names import check_name_length
from ...core.publish import QUEUE_FULL_MESSAGE
from ...core.queues import Consumer, Message
from ...core.quotas import PRODUCE, UserUsage
from ...security.audit import AuditEvent, tls_fields, tls_version_of
from ..peer import peer_of
from .confirms import Confirms
from .lifecycle import ENDING, UNAUTHENTICATED, Event, Lifecycle, State
from .log_frames import LogFrames
from .login import LoginFrames
from .throttle import Throttle
from .topology_frames import TopologyFrames

if TYPE_CHECKING:
    from ...core.session import CoreSession
    from ...store.segments import Segment
    from .broker_api import BrokerApi

log = logging.getLogger("wharf.connection")

SERVER_NAME: Final = "wharf"
# Transport write-buffer watermarks: above HIGH we stop dispatching to this
# connection's consumers and stop reading its publishes; below LOW we resume.
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
WRITE_BUFFER_LOW_BYTES: Final = 1024 * 1024
MAX_PREFETCH: Final = 1_000_000
# A frame at least this big asks the broker to give freed memory back to the system
# once it has been handled (rate limited; see alarms.MemoryTrimmer).
LARGE_FRAME_BYTES: Final = 1024 * 1024
PREAUTH_LIMIT_NAME: Final = "preauth_max_frame_bytes"

# The management API's connection states (GET /api/connections), by lifecycle state.
_API_STATE: Final[dict[State, str]] = {
    State.AWAITING_HANDSHAKE: "starting",
    State.AWAITING_AUTH: "starting",
    State.AUTHENTICATING: "starting",
    State.AWAITING_RESPONSE: "starting",
    State.OPEN: "open",
    State.CLOSING: "closing",
    State.CLOSED: "closing",
}
_TYPE_OF: Final = F.TYPE_OF
_MAX_DEPTH: Final = F.MAX_NESTING_DEPTH
# Positions in a raw frame array (before parsing): the header, and PUBLISH_MANY's bodies.
_TYPE_AT: Final = 0
_REQUEST_ID_AT: Final = 1
_BODIES_AT: Final = 1 + F.PublishMany._fields.index("bodies")


class Connection(TopologyFrames, LogFrames, LoginFrames, asyncio.Protocol):
    # The connection registry's view (core/clients.py ClientConnection): the protocol's
    # name, and its one consumer session (no channels).
    protocol: Final = "native"
    channels: Final = 1

    def __init__(self, broker: BrokerApi) -> None:
        self.broker = broker
        # The vhost this connection works in (core/vhosts.py): "/" until AUTH names one.
        self.virtual_host = broker.vhosts.default
        self.topology = self.virtual_host.topology
        self._publisher = self.topology.publisher
        self.settings = broker.settings
        self.id = next_connection_id()
        self.name = f"conn-{self.id}"
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_host = ""
        self.username = ""
        self.user_tags: tuple[str, ...] = ()
        # The core as this connection's user sees it (every permission check is there);
        # until login, an actor that may do nothing.
        self.core: CoreSession = broker.session(Actor(""))
        self.client_properties: dict[str, Any] = {}
        # The one lifecycle field (lifecycle.py); ``state`` reads it.
        self._lifecycle = Lifecycle()
        # Bytes received while the handshake was due: 8 of them without an error
        # from the decoder mean it accepted the handshake.
        self._handshake_seen = 0
        # The credential check of AUTH (cancelled if the connection is lost meanwhile).
        self._auth_task: asyncio.Task[None] | None = None
        self._login_response: asyncio.Future[str] | None = None  # login.py
        self.login_server_final: str | None = None
        # Until AUTH_OK only a small frame is accepted (SPEC.md, "Limits before
        # authentication"); max_frame_bytes applies after login.
        self._decoder = FrameDecoder(
            PREAUTH_MAX_FRAME_BYTES, expect_handshake=True, use_list=False, schema_limits=True
        )
        self._decoder.set_max_frame_bytes(
            min(PREAUTH_MAX_FRAME_BYTES, self.settings.max_frame_bytes), PREAUTH_LIMIT_NAME
        )
        # Bytes of a partly received frame this connection holds, as last reported to
        # the broker's receive budget; True while reading is paused for that budget.
        self.buffered_bytes = 0
        self.budget_paused = False
        # Counted among the broker's unauthenticated connections (until AUTH_OK or close).
        self.counted_unauthenticated = False
        self._encoder = FrameEncoder()
        self._encode = self._encoder.encode_array
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        # ``writable`` is the consumers' view (core/queues.py: no credit while False):
        # the socket's write buffer is under its high watermark and no consume quota
        # holds deliveries back.  ``_socket_writable`` is the socket's part alone.
        self.writable = True
        self._socket_writable = True
        self._blocked_reading = False
        # True while a byte-rate quota stops reading (throttle.py); frames decoded from
        # the last read wait in ``_deferred`` meanwhile.
        self.read_throttled = False
        self._deferred: list[Any] | None = None
        # The user's limits and byte rates (core/quotas.py), shared by all its
        # connections; set at login.  The throttle applies the quotas' waits.
        self.usage: UserUsage | None = None
        self.throttle = Throttle(self, self._loop)
        self.heartbeat_s = 0
        now = self._loop.time()
        self.created_at = now
        self.last_recv = now
        self.last_send = now
        # Publisher confirms: what is ready to confirm and what waits for the disk.
        self.confirms = Confirms(
            send_frame=self.send_frame,
            send_error=self.send_error,
            schedule_flush=self._schedule_flush,
            loop=self._loop,
            await_store=self._await_store,
            durable_batch=self._durable_batch,
            stats=broker.stats,
        )
        # Delivered-but-unacked messages of this session (core/deliveries.py).
        self.counters = broker.stats.protocols["native"]
        self.deliveries = Deliveries(self.counters, self._loop.time)
        self.published_count = 0  # messages published on it (GET /api/channels)
        self.consumers: dict[str, Consumer] = {}
        self._ctag_seq = itertools.count(1)
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
            F.CLOSE: self._on_close,
            F.CLOSE_OK: self._on_close_ok,
            **self._topology_frame_handlers(),
            **self._log_frame_handlers(),
        }

    @property
    def vhost(self) -> str:
        """The name of the vhost it works in (core/clients.py ClientConnection)."""
        return self.virtual_host.name

    # -- lifecycle (lifecycle.py) ---------------------------------------------------

    @property
    def state(self) -> State:
        return self._lifecycle.state

    @property
    def closing(self) -> bool:
        """True once closing began: nothing more is read or dispatched."""
        return self._lifecycle.state in ENDING

    @property
    def closed(self) -> bool:
        return self._lifecycle.state is State.CLOSED

    @property
    def authenticated(self) -> bool:
        """True once AUTH_OK was sent (and still after the connection closed)."""
        return self._lifecycle.opened

    def _begin_closing(self) -> None:
        self._lifecycle.transition(Event.CLOSE)

    @property
    def unacked_count(self) -> int:
        return len(self.deliveries)

    @property
    def unacked_bytes(self) -> int:
        return self.deliveries.unacked_bytes

    # -- transport callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        peer = peer_of(transport)
        if peer is not None:
            self.peer_host, self.peer = peer
        broker = self.broker
        if broker.stopping:
            self.fatal(ConnectionForced("broker is shutting down"))
            return
        # Only authenticated connections count against max_connections; when it is
        # reached already, a newcomer is refused at once rather than after AUTH.
        refusal = broker.connection_limit_error() or broker.admit_unauthenticated(self)
        if refusal is not None:
            log.warning("refusing %s: %s", self.peer, refusal.message)
            self.fatal(refusal)
            return
        broker.connections[self.id] = self
        s = self.settings
        self.send_frame(
            F.Hello(
                0,
                F.PROTOCOL_VERSION,
                SERVER_NAME,
                s.max_frame_bytes,
                s.max_message_bytes,
                s.heartbeat_s,
                self.offered_mechanisms(),
            )
        )

    def data_received(self, data: bytes) -> None:
        lifecycle = self._lifecycle
        if lifecycle.state in ENDING:
            return
        self.last_recv = self._loop.time()
        decoder = self._decoder
        try:
            raws = decoder.feed(data)
        except WharfError as exc:
            self.fatal(exc)
            return
        if lifecycle.state is State.AWAITING_HANDSHAKE:
            self._handshake_seen += len(data)
            if self._handshake_seen >= F.HANDSHAKE_BYTES:
                lifecycle.transition(Event.HANDSHAKE)
        # Partly received frames across all connections share one budget.
        buffered = decoder.buffered
        if buffered != self.buffered_bytes:
            self._note_buffered(buffered)
        if not raws:
            return
        if self._deferred is not None:
            self._deferred.extend(raws)  # behind the frames a quota holds back
            return
        self._handle_frames(iter(raws))
        if len(data) >= LARGE_FRAME_BYTES:
            self.broker.trimmer.request()

    def _handle_frames(self, frames: Iterator[Any]) -> None:
        lifecycle = self._lifecycle
        for raw in frames:
            if lifecycle.state in ENDING:
                return
            if self.read_throttled:
                # A quota stopped reading: the frames of this read wait with the socket.
                self._deferred = [raw, *frames]
                return
            self._handle(raw)
        decoder = self._decoder
        if decoder.error_pending:
            try:
                decoder.feed(b"")
            except WharfError as exc:
                self.fatal(exc)

    def _note_buffered(self, buffered: int) -> None:
        broker = self.broker
        broker.buffered_bytes += buffered - self.buffered_bytes
        self.buffered_bytes = buffered
        broker.check_receive_budget(self)

    def pause_for_budget(self) -> None:
        """The receive budget is spent: read nothing more until the broker resumes us."""
        self.budget_paused = True
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_for_budget(self) -> None:
        self.budget_paused = False
        self._resume_reading_if_allowed()

    def _resume_reading_if_allowed(self) -> None:
        if (
            self.transport is not None
            and not self.closing
            and self._socket_writable
            and not self._blocked_reading
            and not self.budget_paused
            and not self.read_throttled
        ):
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._socket_writable = self.writable = False
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._socket_writable = True
        self._resume_reading_if_allowed()
        if not self.throttle.deliveries_paused:
            self.writable = True
            self._dispatch_to_consumers()

    def _dispatch_to_consumers(self) -> None:
        for c in list(self.consumers.values()):
            c.queue.schedule_dispatch()

    # -- quotas (core/quotas.py decides, throttle.py waits) -------------------------

    def pause_reading_for_throttle(self) -> None:
        self.read_throttled = True
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def throttle_reading_ended(self) -> None:
        self.read_throttled = False
        self.last_recv = self._loop.time()  # the heartbeat clock restarts with reading
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            self._handle_frames(iter(deferred))  # may stop reading again
        self._resume_reading_if_allowed()

    def throttle_deliveries_started(self) -> None:
        self.writable = False

    def throttle_deliveries_ended(self) -> None:
        if self._socket_writable and not self.closing:
            self.writable = True
            self._dispatch_to_consumers()

    def quota_wait(self, direction: str) -> float:
        """Seconds the user must still wait in ``direction`` (a capped wait is over)."""
        usage = self.usage
        if usage is None:
            return 0.0
        now = self._loop.time()
        return usage.produced(0, now) if direction == PRODUCE else usage.consumed(0, now)

    def send_encoded(self, data: bytes) -> None:
        """Send a frame encoded earlier (an answer the throttle held back)."""
        self._send(data)

    def reply_fetched(self, rid: int, result: dict[str, Any], nbytes: Callable[[], int]) -> None:
        """A FETCH / FETCH_MANY / GET answer of ``nbytes()`` message bytes: sent now, or
        held back while the user is over its consume quota."""
        usage = self.usage
        if usage is None or usage.consume is None:
            self._ok(rid, result)
            return
        wait = usage.consumed(nbytes(), self._loop.time())
        if wait:
            # Encoded now: a FETCH_MANY answer's batches point into a shared read arena.
            self.throttle.hold_answer(wait, self.encode_frame(F.Ok(rid, result)))
        else:
            self._ok(rid, result)

    # -- resource alarms -----------------------------------------------------------

    def set_blocked(self, alarms: set[str]) -> None:
        """The broker's alarms changed: tell the client, stop or resume reading."""
        if self._lifecycle.state is not State.OPEN:
            return
        if alarms:
            self.send_frame(F.Blocked(0, ",".join(sorted(alarms))))
            return
        self.send_frame(F.Unblocked(0))
        if self._blocked_reading:
            self._blocked_reading = False
            self._resume_reading_if_allowed()

    def _block_reading(self) -> None:
        """A publish arrived during an alarm: read nothing more until it clears."""
        self._blocked_reading = True
        if self.transport is not None:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lifecycle.state is State.CLOSED:
            return
        self._lifecycle.transition(Event.LOST)
        if self._auth_task is not None:
            self._auth_task.cancel()  # a no-op once it is done
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self.deliveries.requeue_all(None)
        self.topology.release_owner(self)
        self.virtual_host.clients.pop(self.id, None)
        self.broker.connections.pop(self.id, None)
        self.broker.release_unauthenticated(self)
        self.throttle.close()
        self._deferred = None
        if self.usage is not None:
            self.broker.user_limits.release(self.usage)
            self.usage = None
        if self.buffered_bytes:
            self._note_buffered(0)
        self.broker.forget_budget_reader(self)
        self.broker.stop_awaiting_store(self)
        self.confirms.close()
        self._logs_connection_lost()
        self.broker.connection_closed(self)
        if self.authenticated:
            self.broker.audit.event(AuditEvent.CONNECTION_CLOSE, **self.audit_fields(closed=True))
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
        if not self._flush_scheduled:  # _schedule_flush, inlined: once per frame
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def encode_frame(self, frame: F.Frame) -> bytes:
        """The bytes of ``frame`` on the wire: its type number, then its fields."""
        # Through the buffered packer (FrameEncoder.encode_array): one bytes object per
        # frame, which matters for big DELIVER and fetch answers.
        return self._encode((_TYPE_OF[type(frame)], *frame))

    def send_frame(self, frame: F.Frame) -> None:
        self._send(self._encode((_TYPE_OF[type(frame)], *frame)))

    def _flush(self) -> None:
        self._flush_scheduled = False
        up_to, duplicates = self.confirms.take_ready_with_duplicates()
        if up_to:
            # CONFIRM [32, 0, up_to] or, when some seqs it covers were duplicates,
            # [32, 0, up_to, [seq, ...]] (older clients ignore the trailing field).
            frame = (F.CONFIRM, 0, up_to, duplicates) if duplicates else (F.CONFIRM, 0, up_to)
            self._wbuf.append(self._encode(frame))
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
        self.send_frame(F.Error(request_id, exc.code, exc.message, fatal, details))

    def fatal(self, exc: WharfError, *, quiet: bool = False) -> None:
        """Send a connection-fatal error and close once it is written; ``quiet``: the
        caller logged the reason already."""
        if self.closing:
            return
        if not quiet and (self.authenticated or exc.code != 505):
            log.info(
                "%s: closing with %d %s",
                self.name,
                exc.code,
                exc.message,
                extra={"conn": self.name},
            )
        self.send_error(0, exc, fatal=True)
        self._begin_closing()
        self._decoder.discard()
        if self.buffered_bytes:
            self._note_buffered(0)
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self, reason: str) -> None:
        """Broker shutdown: a fatal 320 then close."""
        self.fatal(ConnectionForced(reason))

    # -- dispatch ------------------------------------------------------------------

    def _handle(self, raw: Any) -> None:
        # The frame array's two header ints (type, request id), which the codec checked;
        # every other field is read from the typed frame F.parse makes.
        ftype: int = raw[_TYPE_AT]
        if self._lifecycle.state is not State.OPEN:
            self._handle_unauthenticated(ftype, raw)
            return
        handler = self._handlers.get(ftype)
        rid: int = raw[_REQUEST_ID_AT]
        try:
            if handler is None:
                if ftype in F.SPECS:
                    raise CommandInvalid(f"frame {F.FRAME_NAMES[ftype]} is not sent by clients")
                F.parse(raw)  # raises NotImplementedByBroker
                return
            handler(F.parse(raw, _MAX_DEPTH))
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
            # Only the bodies' count: the frame may not have parsed.
            bodies = raw[_BODIES_AT] if ftype == F.PUBLISH_MANY and len(raw) > _BODIES_AT else None
            count = len(bodies) if isinstance(bodies, (list, tuple)) and bodies else 1
            self.confirms.nack(rid if rid > 0 else 0, count, exc)
        else:
            self.send_error(rid, exc)

    def _handle_unauthenticated(self, ftype: int, raw: Any) -> None:
        if ftype == F.HEARTBEAT:
            return
        if ftype == F.AUTH_RESPONSE and self._lifecycle.state is State.AWAITING_RESPONSE:
            self._on_auth_response(raw)  # login.py
            return
        if ftype != F.AUTH or self._lifecycle.state is not State.AWAITING_AUTH:
            self.fatal(CommandInvalid("expected AUTH as the first frame"))
            return
        try:
            frame = F.parse(raw, _MAX_DEPTH)
        except WharfError as exc:
            self.fatal(exc)
            return
        assert isinstance(frame, F.Auth)
        self._lifecycle.transition(Event.AUTH)
        self._auth_task = self._loop.create_task(self._authenticate(frame))

    async def _authenticate(self, frame: F.Auth) -> None:
        user = await self._check_credentials(frame)  # login.py: every mechanism
        if user is None:
            return  # refused: closing
        if self._lifecycle.state is not State.AUTHENTICATING:
            return  # closed meanwhile (handshake timeout, broker shutdown)
        broker = self.broker
        broker.release_unauthenticated(self)
        refusal = broker.connection_limit_error(joining=self)
        if refusal is not None:
            log.warning("refusing %s after authentication: %s", self.peer, refusal.message)
            self.fatal(refusal)
            return
        # The vhost: the client property "vhost" (SPEC.md; none: the default "/").
        vhost_name = (frame.client_properties or {}).get(F.AUTH_VHOST_PROPERTY, DEFAULT_VHOST)
        if not isinstance(vhost_name, str):
            self.fatal(InvalidArgument("client property 'vhost' must be a string"))
            return
        actor = Actor(
            user.name, tuple(user.tags), vhost_name, peer=self.peer, protocol=self.protocol
        )
        try:
            vhost = broker.vhosts.get(vhost_name)  # NotFound: "vhost 'x' not found"
            broker.access.check_vhost(actor)  # no permission on the vhost: no connection
            refusal = vhost.connection_limit_error(self.id)  # the vhost's max-connections
            if refusal is not None:
                raise refusal
            # The user's max-connections (506); counted until connection_lost.
            self.usage = broker.user_limits.admit(user.name)
        except WharfError as exc:
            log.warning("refusing %s (user %s): %s", self.peer, user.name, exc.message)
            self.fatal(exc, quiet=True)
            return
        self.virtual_host = vhost
        self.topology = vhost.topology
        self._publisher = vhost.topology.publisher
        vhost.clients[self.id] = self
        self.core = broker.session(actor)
        self._decoder.set_max_frame_bytes(self.settings.max_frame_bytes)
        self.username = user.name
        self.user_tags = tuple(user.tags)
        self.client_properties = frame.client_properties or {}
        server_hb = self.settings.heartbeat_s
        client_hb = frame.heartbeat_s
        self.heartbeat_s = (
            0 if client_hb <= 0 else (min(client_hb, server_hb) if server_hb > 0 else client_hb)
        )
        self._lifecycle.transition(Event.AUTH_OK)
        self.last_recv = self._loop.time()
        self.send_frame(
            F.AuthOk(
                frame.request_id,
                self.name,
                self.heartbeat_s,
                {"product": "wharf"},
                self.login_server_final,
            )
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
        self.broker.audit.event(AuditEvent.CONNECTION_OPEN, **self.audit_fields())

    def audit_fields(self, *, closed: bool = False) -> dict[str, Any]:
        """Who and where, for audit lines about this connection (security/audit.py)."""
        fields: dict[str, Any] = {
            "connection": self.name,
            "user": self.username,
            "vhost": self.core.actor.vhost,
            "peer": self.peer,
            "protocol": self.protocol,
            "tls_version": tls_version_of(self.transport),
        }
        if closed:
            fields["duration_s"] = round(self._loop.time() - self.created_at, 3)
        return fields

    def _ok(self, rid: int, result: dict[str, Any] | None = None) -> None:
        self.send_frame(F.Ok(rid, result))

    # -- periodic checks (called by the broker's ticker, ~1/s) ---------------------

    def tick(self, now: float) -> None:
        state = self._lifecycle.state
        if state is not State.OPEN:
            if (
                state in UNAUTHENTICATED
                and now - self.created_at > self.settings.handshake_timeout_s
            ):
                self.fatal(AccessRefused("handshake/authentication not completed in time"))
            return
        hb = self.heartbeat_s
        if hb:
            # A socket the broker does not read for a quota cannot show the client alive.
            if now - self.last_recv > 2 * hb and not self.read_throttled:
                self.fatal(HeartbeatTimeout(f"no frame from the client for {2 * hb} s"))
                return
            if now - self.last_send >= hb / 2:
                self.send_frame(F.Heartbeat(0))
        self._check_ack_timeout(now)

    def _check_ack_timeout(self, now: float) -> None:
        found = self.deliveries.overdue(now, self.settings.ack_timeout_ms / 1000.0)
        if found is None:
            return
        oldest, (_, _, consumer) = found
        reason = f"delivery {oldest} not acknowledged within {self.settings.ack_timeout_ms} ms"
        log.warning("%s: %s; requeueing", self.name, reason, extra={"conn": self.name})
        if consumer is None:
            self.deliveries.requeue_one(oldest)
            self.send_error(0, DeliveryAckTimeout(reason, details={"delivery_tag": oldest}))
        else:
            self.server_cancel(consumer, DeliveryAckTimeout.code, reason)
            self.deliveries.requeue_all(consumer)

    # -- publishing ----------------------------------------------------------------

    def _on_publish_many(self, f: F.PublishMany) -> None:
        bodies = f.bodies
        if not bodies:
            return
        self._publish(f.exchange, f.routing_key, f.properties, bodies, f.request_id, f.flags)

    def _on_publish(self, f: F.Publish) -> None:
        self._publish(f.exchange, f.routing_key, f.properties, (f.body,), f.request_id, f.flags)

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        seq: int,
        flags: int,
    ) -> None:
        """One PUBLISH or PUBLISH_MANY through the core's publish path (core/publish.py);
        its result becomes confirms, nacks and RETURN frames."""
        n = len(bodies)
        self.published_count += n
        publisher = self._publisher
        if publisher.alarms and not self._blocked_reading:
            self._block_reading()
        usage = self.usage
        if usage is not None and usage.produce is not None:
            self._produced(usage, sum(map(len, bodies)))
        try:
            res = self.core.publish(exchange, routing_key, props, bodies)
        except WharfError as exc:
            self.confirms.nack(seq, n, exc)
            return
        self.counters.published += n
        refused = res.refused
        if refused:
            # x-overflow reject-publish(-dlx): the last ``refused`` did not fit somewhere.
            self.confirms.nack(
                seq + n - refused if seq else 0, refused, ResourceError(QUEUE_FULL_MESSAGE)
            )
        elif res.unroutable and flags & F.FLAG_MANDATORY:
            for i, body in enumerate(bodies):
                s = seq + i if seq else 0
                self.send_frame(
                    F.Return(0, s, Unroutable.code, "NO_ROUTE", exchange, routing_key, props, body)
                )
        self.confirms.published(seq, n, res.store_batch, res.log_parts, res.duplicates)

    def _produced(self, usage: UserUsage, nbytes: int) -> None:
        """Bytes published or produced under a quota: stop reading while over it."""
        wait = usage.produced(nbytes, self._loop.time())
        if wait:
            self.throttle.pause_reading(wait)

    # -- publisher confirms: the store hooks of Confirms -------------------------------

    def _await_store(self) -> None:
        self.broker.await_store(self)

    def _durable_batch(self) -> int:
        store = self.virtual_host.store
        return store.durable_batch if store is not None else 0

    def store_committed(self, batch: int) -> bool:
        """The broker's group commit finished ``batch`` (negative: failed); True while
        confirms still wait for the store."""
        return self.confirms.store_committed(batch)

    # -- delivering ----------------------------------------------------------------

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None:
        tag = self.deliveries.deliver(consumer, batch)
        entries: list[tuple[Any, ...]] = []
        append = entries.append
        for m in batch:
            dc = m.delivery_count
            append((tag, dc > 1, dc, m.exchange, m.routing_key, m.properties, m.body))
            tag += 1
        self.send_frame(F.Deliver(0, consumer.tag, entries))
        usage = self.usage
        if usage is not None and usage.consume is not None:
            wait = usage.consumed(sum(len(m.body) for m in batch), self._loop.time())
            if wait:
                self.throttle.hold_deliveries(wait)

    def server_cancel(self, consumer: Consumer, code: int, reason: str) -> None:
        """The broker ends a consumer (queue deleted, ack timeout)."""
        if self.consumers.get(consumer.tag) is not consumer:
            return
        del self.consumers[consumer.tag]
        consumer.queue.remove_consumer(consumer)
        if not self.closing:
            self.send_frame(F.Cancelled(0, consumer.tag, code, reason))

    def requeue_unacked(self, consumer: Consumer | None) -> None:
        """Requeue this connection's unacked deliveries (all, or one consumer's)."""
        self.deliveries.requeue_all(consumer)

    def relocate(self, old: Segment) -> int:
        """Compaction: copy forward this connection's unacked messages stored in ``old``."""
        return self.deliveries.relocate(old)

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
        entries, unknown = self.deliveries.settle(tags)
        if unknown is not None:
            self._unknown_tag(ack_id, unknown)
        return entries

    def _on_ack_many(self, f: F.AckMany) -> None:
        tags = f.delivery_tags
        for t in tags:
            if type(t) is not int:
                raise ProtocolSyntaxError("AckMany.delivery_tags must be integers")
        self.deliveries.ack(self._settle(tags, f.request_id))

    def _tags_for(self, ack_id: int, tag: int, multiple: bool) -> list[int] | None:
        """The tags an ACK/NACK settles; None (after answering 407) if there are none."""
        if not multiple:
            return [tag]
        tags = self.deliveries.tags(tag)
        if not tags and tag:
            self._unknown_tag(ack_id, tag)
            return None
        return tags

    def _on_ack(self, f: F.Ack) -> None:
        tags = self._tags_for(f.request_id, f.delivery_tag, f.multiple)
        if tags is not None:
            self.deliveries.ack(self._settle(tags, f.request_id))

    def _on_nack(self, f: F.Nack) -> None:
        tags = self._tags_for(f.request_id, f.delivery_tag, f.multiple)
        if tags is None:
            return
        entries = self._settle(tags, f.request_id)
        if f.requeue and f.delay_ms > 0:
            self.deliveries.delay(entries, f.delay_ms)
            return
        self.deliveries.reject(entries, f.requeue)

    def _on_reject(self, f: F.Reject) -> None:
        self.deliveries.reject(self._settle([f.delivery_tag], f.request_id), f.requeue)

    def _on_heartbeat(self, f: F.Heartbeat) -> None:
        return

    # -- consumers -----------------------------------------------------------------

    def _on_consume(self, f: F.Consume) -> None:
        queue = self.core.queue_to_read(f.queue, self, "basic.consume")
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
        check_name_length("consumer tag", tag)
        if tag in self.consumers:
            raise PreconditionFailed(f"consumer tag '{tag}' already in use on this connection")
        queue.check_new_consumer(f.exclusive)
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
        queue = self.core.queue_to_read(f.queue, self, "basic.get")
        queue.last_used = time.monotonic()
        msg = queue.take()
        if msg is None:
            self.send_frame(F.GetOk(f.request_id, None, 0))
            return
        tag = self.deliveries.get(queue, msg, f.no_ack)
        dc = msg.delivery_count
        entry = (tag, dc > 1, dc, msg.exchange, msg.routing_key, msg.properties, msg.body)
        answer = F.GetOk(f.request_id, entry, queue.ready_count)
        usage = self.usage
        wait = 0.0
        if usage is not None and usage.consume is not None:
            wait = usage.consumed(len(msg.body), self._loop.time())
        if wait:
            self.throttle.hold_answer(wait, self.encode_frame(answer))
        else:
            self.send_frame(answer)

    # -- close ---------------------------------------------------------------------

    def _on_close(self, f: F.Close) -> None:
        self.send_frame(F.CloseOk(f.request_id))
        self._begin_closing()
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _on_close_ok(self, f: F.CloseOk) -> None:
        self._begin_closing()
        if self.transport is not None:
            self.transport.close()

    # -- the connection registry (core/clients.py) ----------------------------------

    def all_consumers(self) -> list[Consumer]:
        return list(self.consumers.values())

    def describe_channels(self) -> list[dict[str, Any]]:
        """The native protocol's one session, shown as channel 1: every publish that
        carries a sequence number is confirmed; prefetch is per consumer."""
        if self.state is not State.OPEN:
            return []
        return [
            describe_channel(
                self,
                1,
                consumers=len(self.consumers),
                unacked=len(self.deliveries),
                prefetch=0,
                global_prefetch=0,
                confirm=True,
                transactional=False,
                published=self.published_count,
                delivered=self.deliveries.last_tag,
            )
        ]

    def describe(self) -> dict[str, Any]:
        state = _API_STATE[self.state]
        return {
            "name": self.name,
            "peer": self.peer,
            "user": self.username,
            "vhost": self.virtual_host.name,
            "state": state,
            "protocol": self.protocol,
            "channels": self.channels,
            "heartbeat_s": self.heartbeat_s,
            "consumers": len(self.consumers),
            "unacked": len(self.deliveries),
            "client_properties": self.client_properties,
            **tls_fields(self.transport),
        }
