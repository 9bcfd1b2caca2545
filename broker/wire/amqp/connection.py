"""One AMQP 0-9-1 client connection: protocol header, start/tune/open, heartbeats, the
channels, and closing on hard errors as RabbitMQ does.

States (``AmqpState``), moved only forward::

    AWAITING_HEADER -> STARTING (connection.start sent) -> AUTHENTICATING (start-ok in)
    -> TUNING (tune sent) -> OPENING (tune-ok in) -> OPEN (open-ok sent)
    any -> CLOSING (connection.close sent or received) -> CLOSED (socket gone)

The connection is the ``QueueOwner`` of its exclusive queues (as RabbitMQ: exclusive to
the connection, not the channel); each channel (channel.py) is a consumer session with
its own ``Deliveries`` and, in confirm mode, its own ``Confirms``.  Outgoing bytes are
buffered and written once per event-loop iteration, like the native connection.
"""

from __future__ import annotations

import array
import asyncio
import enum
import fcntl
import functools
import logging
import platform
import termios
from typing import TYPE_CHECKING, Any, Final, cast

from pamqp import commands as C

from wharf.protocol.errors import WharfError

from ...core.access import DEFAULT_VHOST, Actor
from ...core.clients import describe_channel, next_connection_id
from ...core.quotas import CONSUME, PRODUCE
from ...security.audit import AuditEvent, tls_fields, tls_version_of
from ...security.cert_login import CERT_LOGIN_NONE
from ...security.identity import MECHANISM_EXTERNAL, MECHANISM_OTHER, MECHANISM_PLAIN, User
from ..peer import peer_of
from . import methods as M
from .channel import Channel
from .errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
    UNEXPECTED_FRAME,
    AmqpError,
)
from .fields import FieldError, decode_fields
from .frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_BYTES,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    PROTOCOL_HEADER_BYTES,
    FrameReader,
    decode_method,
)

if TYPE_CHECKING:
    from ...core.queues import Consumer
    from ...core.quotas import UserUsage
    from ...core.session import CoreSession
    from ...store.segments import Segment
    from .broker_api import AmqpBrokerApi

log = logging.getLogger("wharf.amqp")

# RabbitMQ's defaults: channel_max 2047, frame_max 128 KiB.
CHANNEL_MAX: Final = 2047
FRAME_MAX_BYTES: Final = 131_072
# Before tune-ok only a small frame is accepted (start-ok: client properties and the
# credentials), as the native protocol's limit before authentication.
PRE_TUNE_FRAME_MAX_BYTES: Final = 8 * 1024
# After connection.close is sent, the client's close-ok is awaited this long.
CLOSE_OK_TIMEOUT_S: Final = 3.0
WRITE_BUFFER_HIGH_BYTES: Final = 4 * 1024 * 1024
WRITE_BUFFER_LOW_BYTES: Final = 1024 * 1024
# A consumer whose prefetch window Wharf has just filled, on a connection that then stays
# silent this long, gets one heartbeat frame (heartbeats negotiated only). Event-loop
# clients that defer their acks to "after the next poll" (kombu's hub: Celery's early
# acks) otherwise sit in poll until their own timer fires (up to 10 s) while holding the
# window: nothing else will arrive on the socket to wake them. Any frame wakes them; a
# heartbeat is the one every client accepts at any time.
WINDOW_NUDGE_S: Final = 0.005
# Heartbeats follow the negotiated interval T, each connection on its own timers (not the
# broker's 1 s tick), as RabbitMQ's rabbit_heartbeat: every T/2 a heartbeat is sent if
# nothing was written since the previous check; every T the broker looks whether anything
# was read since the previous check, and closes the socket when this many checks in a
# row found nothing: between 2T and 3T of silence from the client.
HEARTBEAT_SENDS_PER_INTERVAL: Final = 2
MISSED_HEARTBEAT_CHECKS: Final = 2
MECHANISM_AMQPLAIN: Final = "AMQPLAIN"
MECHANISMS: Final = f"{MECHANISM_PLAIN} {MECHANISM_AMQPLAIN}"
# On amqps_port with a verified client certificate and tls_cert_login on, EXTERNAL too.
MECHANISMS_WITH_EXTERNAL: Final = f"{MECHANISMS} {MECHANISM_EXTERNAL}"
LOCALE: Final = "en_US"
PROTOCOL_NAME: Final = "amqp"
# The capabilities table of connection.start, as RabbitMQ 3.x sends it.
SERVER_CAPABILITIES: Final[dict[str, Any]] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}
_CONNECTION_CLOSE: Final = C.Connection.Close.index
_CONNECTION_CLOSE_OK: Final = C.Connection.CloseOk.index
_CHANNEL_OPEN: Final = C.Channel.Open.index
_BASIC_PUBLISH_ID: Final = C.Basic.Publish.index.to_bytes(4, "big")
# RabbitMQ's connection.blocked reason names its alarms in this order.
_RABBITMQ_ALARMS: Final[tuple[str, ...]] = ("memory", "disk")


def blocked_reason(alarms: set[str]) -> str:
    """connection.blocked's reason as RabbitMQ words it: "low on memory & disk"."""
    order: list[str] = [a for a in _RABBITMQ_ALARMS if a in alarms]
    order += sorted(alarms.difference(_RABBITMQ_ALARMS))
    return "low on " + " & ".join(order)


class AmqpState(enum.Enum):
    AWAITING_HEADER = "awaiting_header"
    STARTING = "starting"
    AUTHENTICATING = "authenticating"
    TUNING = "tuning"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# The 0-9-1 header, and AMQP 0-9's, which RabbitMQ also answers with 0-9-1's
# connection.start (the two differ in no frame a 0-9 client sends).
_ACCEPTED_HEADERS: Final = (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09")
# Frame types AMQP 0-9-1 defines: method, content header, content body, heartbeat.
_FRAME_TYPES: Final = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})
_BEFORE_OPEN: Final = frozenset(
    {
        AmqpState.AWAITING_HEADER,
        AmqpState.STARTING,
        AmqpState.AUTHENTICATING,
        AmqpState.TUNING,
        AmqpState.OPENING,
    }
)
_API_STATE: Final = {
    AmqpState.OPEN: "open",
    AmqpState.CLOSING: "closing",
    AmqpState.CLOSED: "closing",
}


@functools.cache
def _server_properties() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        wharf_version = version("wharf")
    except PackageNotFoundError:
        wharf_version = "0"
    return {
        "capabilities": SERVER_CAPABILITIES,
        "cluster_name": "wharf",
        "copyright": "Wharf contributors",
        "information": "Wharf, a message broker in Python; AMQP 0-9-1 as RabbitMQ 3.x",
        "platform": f"Python {platform.python_version()}",
        "product": "Wharf",
        "version": wharf_version,
    }


class AmqpConnection(asyncio.Protocol):
    # The connection registry's view (core/clients.py ClientConnection).
    protocol: Final = PROTOCOL_NAME

    def __init__(self, broker: AmqpBrokerApi) -> None:
        self.broker = broker
        self.settings = broker.settings
        # The vhost of connection.open (core/vhosts.py); the default one until then.
        self.virtual_host = broker.vhosts.default
        self.topology = self.virtual_host.topology
        # The user's share of its limits (core/quotas.py), from connection.open to close.
        self.usage: UserUsage | None = None
        self.id = next_connection_id()
        self.name = f"conn-{self.id}"
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_host = ""
        self.username = ""
        self.vhost = DEFAULT_VHOST
        self.counted_unauthenticated = False
        self.core: CoreSession = broker.session(Actor(""))
        self.client_properties: dict[str, Any] = {}
        self.state = AmqpState.AWAITING_HEADER
        self._header = b""
        self._reader = FrameReader(PRE_TUNE_FRAME_MAX_BYTES)
        self.frame_max = FRAME_MAX_BYTES
        self.channel_max = CHANNEL_MAX
        self.heartbeat_s = 0
        self.open_channels: dict[int, Channel] = {}
        self._user_tags: tuple[str, ...] = ()
        # Channels in confirm mode (their confirms are sent at each flush).
        self.confirming: set[Channel] = set()
        # Channels holding publishes of the current read (Channel.flush_publishes).
        self.batching: set[Channel] = set()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._loop = self.loop = asyncio.get_running_loop()
        self.writable = True
        self._blocked_reading = False
        self._blocked_sent = False
        self._auth_task: asyncio.Task[None] | None = None
        now = self._loop.time()
        self.created_at = now
        self.last_recv = now
        self.last_send = now
        self._closing_since = 0.0
        self._opened = False  # connection.open-ok was sent
        # Byte-rate quotas (core/quotas.py decides): reading stops, or deliveries are
        # held, until these timers fire and the core says the user may go on.
        self._quota_read_timer: asyncio.TimerHandle | None = None
        self._quota_read_direction = PRODUCE
        self._quota_deliver_timer: asyncio.TimerHandle | None = None
        # window_filled(): the pending nudge and the read count when it was armed.
        self._nudge_timer: asyncio.TimerHandle | None = None
        self._reads = 0
        self._nudge_reads = 0
        self._nudge_at = 0.0
        # The heartbeat timers (started at open-ok), and what they saw at their last check:
        # the flushes (writes), the reads, and the checks in a row that found no read.
        self._hb_send_timer: asyncio.TimerHandle | None = None
        self._hb_recv_timer: asyncio.TimerHandle | None = None
        self._writes = 0
        self._writes_seen = 0
        self._reads_seen = 0
        self._silent_checks = 0
        # While the write buffer is over its mark (reading paused): the bytes waiting
        # unread in the socket and the bytes still to write, at the last check.
        self._backlog_seen = (0, 0)

    # -- the registry's view (core/clients.py) ----------------------------------------

    @property
    def closing(self) -> bool:
        return self.state is AmqpState.CLOSING or self.state is AmqpState.CLOSED

    @property
    def channels(self) -> int:
        return len(self.open_channels)

    def loop_time(self) -> float:
        return self._loop.time()

    @property
    def unacked_count(self) -> int:
        return sum(len(ch.deliveries) for ch in self.open_channels.values())

    @property
    def unacked_bytes(self) -> int:
        return sum(ch.deliveries.unacked_bytes for ch in self.open_channels.values())

    def all_consumers(self) -> list[Consumer]:
        return [c for ch in self.open_channels.values() for c in ch.consumers.values()]

    def describe(self) -> dict[str, Any]:
        props = self.client_properties
        return {
            "name": self.name,
            "peer": self.peer,
            "user": self.username,
            "vhost": self.vhost,
            "state": _API_STATE.get(self.state, "starting"),
            "protocol": self.protocol,
            "channels": len(self.open_channels),
            "heartbeat_s": self.heartbeat_s,
            "frame_max": self.frame_max,
            "channel_max": self.channel_max,
            "consumers": sum(len(ch.consumers) for ch in self.open_channels.values()),
            "unacked": self.unacked_count,
            "client_properties": {
                k: props[k]
                for k in ("product", "version", "platform", "connection_name", "information")
                if isinstance(props.get(k), str)
            },
            **tls_fields(self.transport),
        }

    def describe_channels(self) -> list[dict[str, Any]]:
        return [
            describe_channel(
                self,
                ch.number,
                consumers=len(ch.consumers),
                unacked=len(ch.deliveries),
                prefetch=ch.prefetch_count,
                global_prefetch=ch.global_prefetch,
                confirm=ch.confirms is not None,
                transactional=ch.tx is not None,
                published=ch.published,
                delivered=ch.deliveries.last_tag,
            )
            for ch in self.open_channels.values()
        ]

    def shutdown(self, reason: str) -> None:
        """Broker shutdown or an operator's close: connection.close 320."""
        if self.state in _BEFORE_OPEN and self.state is not AmqpState.OPENING:
            self._abort()
            return
        self.close_with(AmqpError(CONNECTION_FORCED, reason))

    # -- transport callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        peer = peer_of(transport)
        if peer is not None:
            self.peer_host, self.peer = peer
        broker = self.broker
        if broker.stopping:
            self._abort()
            return
        refusal = broker.connection_limit_error() or broker.admit_unauthenticated(self)
        if refusal is not None:
            log.warning("refusing AMQP connection from %s: %s", self.peer, refusal.message)
            self._abort()
            return
        broker.connections[self.id] = self

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is AmqpState.CLOSED:
            return
        self.last_recv = self._loop.time()
        self._reads += 1
        if state is AmqpState.AWAITING_HEADER:
            data = self._read_header(data)
            if not data:
                return
        try:
            frames = self._reader.feed(data)
        except AmqpError as exc:
            self.close_with(exc)
            return
        open_channels = self.open_channels
        for ftype, channel, payload in frames:
            state = self.state
            if state is AmqpState.CLOSED:
                return
            try:
                # FRAME_HEADER 2 and FRAME_BODY 3: the content frames.
                if FRAME_HEADER <= ftype <= FRAME_BODY and state is AmqpState.OPEN:
                    # Two of a publish's three frames: straight to their open channel
                    # (channel 0 is never in open_channels), past _handle_frame's checks
                    # for heartbeats, closing, unknown types and method frames, none of
                    # which a content frame on an open channel meets.
                    ch = open_channels.get(channel)
                    if ch is not None:
                        ch.handle_frame(ftype, payload)
                        continue
                self._handle_frame(ftype, channel, payload)
            except AmqpError as exc:
                self.close_with(exc)
            except Exception:
                log.exception("%s: internal error handling an AMQP frame", self.name)
                self.close_with(AmqpError(INTERNAL_ERROR, "internal error; the broker logged it"))
        if self.batching:
            self._flush_publishes()

    def _flush_publishes(self) -> None:
        """The batched publishes of every channel go to the core, before anything else."""
        for ch in list(self.batching):
            try:
                ch.flush_publishes()
            except AmqpError as exc:
                self.close_with(exc)
            except Exception:
                log.exception("%s: internal error publishing", self.name)
                self.close_with(AmqpError(INTERNAL_ERROR, "internal error; the broker logged it"))

    def _read_header(self, data: bytes) -> bytes:
        """Collect the 8-byte protocol header; returns the bytes after it."""
        need = PROTOCOL_HEADER_BYTES - len(self._header)
        self._header += data[:need]
        rest = data[need:]
        if len(self._header) < PROTOCOL_HEADER_BYTES and any(
            h.startswith(self._header) for h in _ACCEPTED_HEADERS
        ):
            return b""
        if self._header not in _ACCEPTED_HEADERS:
            # The spec's answer to a header it does not accept: the one it speaks, then
            # the socket closes.
            log.info("%s: wrong protocol header %r from %s", self.name, self._header, self.peer)
            self._enter_closing()
            self._send(PROTOCOL_HEADER)
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return b""
        self.state = AmqpState.STARTING
        _, cert = self._tls_info()
        offer_external = cert is not None and self.broker.authenticator.cert_login != (
            CERT_LOGIN_NONE
        )
        mechanisms = MECHANISMS_WITH_EXTERNAL if offer_external else MECHANISMS
        self._send(M.connection_start(_server_properties(), mechanisms, LOCALE))
        return rest

    def _tls_info(self) -> tuple[bool, Any]:
        """(the connection came over amqps_port, its verified client certificate or
        None)."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return False, None
        return True, ssl_object.getpeercert() or None

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.writable = False
        for ch in self.open_channels.values():
            ch.writable = False
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        self._resume_reading_if_allowed()
        for ch in list(self.open_channels.values()):
            ch.resume_dispatch()

    @property
    def can_deliver(self) -> bool:
        """Deliveries may be pushed: the socket takes them and no quota holds them."""
        return self.writable and self._quota_deliver_timer is None

    def _resume_reading_if_allowed(self) -> None:
        if (
            self.transport is not None
            and not self.closing
            and self.writable
            and not self._blocked_reading
            and self._quota_read_timer is None
        ):
            self.transport.resume_reading()

    # -- byte-rate quotas (core/quotas.py decides; as native/throttle.py, without its
    # THROTTLED frame, which AMQP has no equivalent of) ----------------------------------

    def quota_produced(self, nbytes: int) -> None:
        """Message bodies published: over the user's quota, read nothing for the wait
        (the frames of the read being handled are still handled)."""
        usage = self.usage
        if usage is None or usage.produce is None:
            return
        wait = usage.produced(nbytes, self._loop.time())
        if wait:
            self._pause_reading_for_quota(wait, PRODUCE)

    def quota_consumed(self, nbytes: int, *, answer: bool = False) -> None:
        """Message bodies delivered: over the user's quota, push no deliveries for the
        wait; after a basic.get answer (``answer``) also read nothing, so that a client
        cannot get its way around the quota with more gets."""
        usage = self.usage
        if usage is None or usage.consume is None:
            return
        wait = usage.consumed(nbytes, self._loop.time())
        if not wait:
            return
        self._hold_deliveries(wait)
        if answer:
            self._pause_reading_for_quota(wait, CONSUME)

    def _pause_reading_for_quota(self, wait_s: float, direction: str) -> None:
        if self.closing:
            return
        if self._quota_read_timer is not None:
            self._quota_read_timer.cancel()
        self._quota_read_direction = direction
        self._quota_read_timer = self._loop.call_later(wait_s, self._quota_reading_due)
        if self.transport is not None:
            self.transport.pause_reading()

    def _quota_reading_due(self) -> None:
        self._quota_read_timer = None
        if self.closing:
            return
        again = self._quota_wait(self._quota_read_direction)
        if again:
            self._pause_reading_for_quota(again, self._quota_read_direction)
            return
        self.last_recv = self._loop.time()  # the heartbeat clock restarts with reading
        self._resume_reading_if_allowed()

    def _hold_deliveries(self, wait_s: float) -> None:
        if self.closing:
            return
        if self._quota_deliver_timer is not None:
            self._quota_deliver_timer.cancel()
        self._quota_deliver_timer = self._loop.call_later(wait_s, self._deliveries_due)
        for ch in self.open_channels.values():
            ch.writable = False  # the consumers' credit reads as 0

    def _deliveries_due(self) -> None:
        self._quota_deliver_timer = None
        if self.closing:
            return
        again = self._quota_wait(CONSUME)
        if again:
            self._hold_deliveries(again)
            return
        for ch in list(self.open_channels.values()):
            ch.resume_dispatch()

    def _quota_wait(self, direction: str) -> float:
        """Seconds the user must still wait (recording nothing)."""
        usage = self.usage
        if usage is None:
            return 0.0
        now = self._loop.time()
        return usage.produced(0, now) if direction == PRODUCE else usage.consumed(0, now)

    @property
    def quota_paused(self) -> bool:
        return self._quota_read_timer is not None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is AmqpState.CLOSED:
            return
        was_open = self._opened
        self.state = AmqpState.CLOSED
        if self._auth_task is not None:
            self._auth_task.cancel()
        for timer in (
            self._quota_read_timer,
            self._quota_deliver_timer,
            self._nudge_timer,
            self._hb_send_timer,
            self._hb_recv_timer,
        ):
            if timer is not None:
                timer.cancel()
        self._release_channels()
        self.topology.release_owner(self)
        broker = self.broker
        self.virtual_host.clients.pop(self.id, None)
        if self.usage is not None:
            broker.user_limits.release(self.usage)
            self.usage = None
        broker.connections.pop(self.id, None)
        broker.release_unauthenticated(self)
        broker.stop_awaiting_store(self)
        broker.connection_closed(self)
        if was_open:
            broker.audit.event(AuditEvent.CONNECTION_CLOSE, **self.audit_fields(closed=True))
            log.info("%s closed (%s, user %s)", self.name, self.peer, self.username)

    def _release_channels(self) -> None:
        for ch in list(self.open_channels.values()):
            ch.release()
        if self.usage is not None and self.open_channels:
            self.broker.user_limits.release_channel(self.usage, len(self.open_channels))
        self.open_channels.clear()
        self.confirming.clear()

    # -- output ----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._wbuf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send(self, data: bytes) -> None:
        self._send(data)

    def send_many(self, frames: list[bytes]) -> None:
        self._wbuf.extend(frames)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def window_filled(self) -> None:
        """A consumer's prefetch window is now all delivered: unless the client sends
        something within WINDOW_NUDGE_S of the latest such fill (an ack, usually), wake it
        with a heartbeat."""
        if not self.heartbeat_s:
            return
        self._nudge_reads = self._reads
        self._nudge_at = self._loop.time()
        if self._nudge_timer is None:
            self._nudge_timer = self._loop.call_later(WINDOW_NUDGE_S, self._nudge)

    def _nudge(self) -> None:
        self._nudge_timer = None
        if self.state is not AmqpState.OPEN or self._reads != self._nudge_reads:
            return  # the client answered after the latest fill
        wait_s = self._nudge_at + WINDOW_NUDGE_S - self._loop.time()
        if wait_s > 0:  # a later fill moved the deadline
            self._nudge_timer = self._loop.call_later(wait_s, self._nudge)
        else:
            self._send(HEARTBEAT_FRAME)

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for ch in self.confirming:
            ack = ch.take_confirms()
            if ack is not None:
                self._wbuf.append(ack)
        transport = self.transport
        if not self._wbuf or transport is None or transport.is_closing():
            self._wbuf.clear()
            return
        buf = self._wbuf
        self._wbuf = []
        transport.writelines(buf)
        self.last_send = self._loop.time()
        self._writes += 1

    def _await_client_close(self) -> None:
        """After close-ok to a client's connection.close: the client closes the socket
        (close-ok tells its recipient it may), as RabbitMQ waits for it.  Frames the client
        wrote after its close are read and dropped meanwhile (amqplib writes channel 0's
        close before its channels' buffered publishes): closing a socket with unread data
        would send a TCP reset, and the client would see ECONNRESET instead of close-ok.
        tick() closes the socket after CLOSE_OK_TIMEOUT_S."""
        self._closing_since = self._loop.time()
        if self.transport is not None and self.username == "":
            self.transport.close()  # before login there is nothing to wait for
        elif self.transport is not None:
            self.transport.resume_reading()

    def _enter_closing(self) -> None:
        if self.state is not AmqpState.CLOSED:
            self.state = AmqpState.CLOSING
            self._closing_since = self._loop.time()

    def _abort(self) -> None:
        self._enter_closing()
        if self.transport is not None:
            self.transport.close()

    def close_with(self, exc: AmqpError) -> None:
        """A hard error (or a forced close): connection.close, then wait for close-ok."""
        if self.closing:
            return
        if self.state is AmqpState.AWAITING_HEADER:
            self._abort()
            return
        level = logging.WARNING if exc.code not in (CONNECTION_FORCED,) else logging.INFO
        log.log(level, "%s: closing connection: %s", self.name, exc.reply_text())
        self._reader.discard()
        if self.batching:
            # Publishes read before the error are kept, as RabbitMQ handles frames in order.
            batching = list(self.batching)
            self.batching.clear()
            for ch in batching:
                try:
                    ch.flush_publishes()
                except AmqpError:
                    pass  # closing anyway
        self._flush()  # what is ready (deliveries, confirms) goes out before the close
        self._release_channels()
        self._enter_closing()
        self._send(M.close(0, exc.code, exc.reply_text(), exc.method))
        self._flush()
        if self.username == "" and self.transport is not None:
            self.transport.close()  # before login there is nothing to wait for

    # -- frames ----------------------------------------------------------------------------

    def _handle_frame(self, ftype: int, channel: int, payload: bytes) -> None:
        if ftype == FRAME_HEARTBEAT:
            if channel != 0:
                raise AmqpError(UNEXPECTED_FRAME, "heartbeat frame on a channel other than 0")
            return
        state = self.state
        if state is AmqpState.CLOSING:
            # After connection.close only close and close-ok matter.
            if channel == 0 and ftype == FRAME_METHOD and len(payload) >= 4:
                mid = int.from_bytes(payload[:4], "big")
                if mid == _CONNECTION_CLOSE:
                    self._send(M.connection_close_ok())
                    self._flush()
                    self._await_client_close()
                elif mid == _CONNECTION_CLOSE_OK and self.transport is not None:
                    self.transport.close()
            return
        if ftype not in _FRAME_TYPES:
            raise AmqpError(FRAME_ERROR, f"type {ftype}, unknown frame type")
        if self.batching and ftype == FRAME_METHOD and payload[:4] != _BASIC_PUBLISH_ID:
            self._flush_publishes()  # the publishes before this method come first
            if self.closing:
                return
        if channel == 0:
            if ftype != FRAME_METHOD:
                raise AmqpError(UNEXPECTED_FRAME, f"content frame (type {ftype}) on channel 0")
            mid, method = decode_method(payload)
            self._connection_method(mid, method)
            return
        if state is not AmqpState.OPEN:
            raise AmqpError(UNEXPECTED_FRAME, "frame on a channel before the connection was opened")
        ch = self.open_channels.get(channel)
        if ch is None:
            if ftype != FRAME_METHOD:
                raise AmqpError(CHANNEL_ERROR, "expected 'channel.open'")
            mid, method = decode_method(payload)
            if mid != _CHANNEL_OPEN:
                raise AmqpError(CHANNEL_ERROR, "expected 'channel.open'", mid)
            self._open_channel(channel, mid)
            return
        ch.handle_frame(ftype, payload)

    def _open_channel(self, number: int, mid: int) -> None:
        # As RabbitMQ 3.x: channel_max bounds how many channels are open, not their
        # numbers (aiormq's own tests open channel 65535 under a channel_max of 2047).
        limit = self.channel_max
        if limit and len(self.open_channels) >= limit:
            raise AmqpError(
                NOT_ALLOWED,
                f"number of channels opened ({len(self.open_channels)}) has reached the "
                f"negotiated channel_max ({limit})",
                mid,
            )
        if self.usage is not None:
            try:
                self.broker.user_limits.admit_channel(self.usage)  # the user's max-channels
            except WharfError as exc:
                raise AmqpError(NOT_ALLOWED, exc.message, mid) from None
        self.open_channels[number] = Channel(self, number)
        self._send(M.channel_open_ok(number))

    def channel_closed(self, ch: Channel) -> None:
        """``ch`` is gone (close-ok sent or received): its number is free again."""
        if self.open_channels.get(ch.number) is ch:
            del self.open_channels[ch.number]
            if self.usage is not None:
                self.broker.user_limits.release_channel(self.usage)
        self.confirming.discard(ch)

    # -- connection class (channel 0) -----------------------------------------------

    def _connection_method(self, mid: int, method: Any) -> None:
        state = self.state
        if isinstance(method, C.Connection.StartOk):
            if state is not AmqpState.STARTING:
                raise AmqpError(COMMAND_INVALID, "connection.start-ok was not expected", mid)
            self._start_ok(method, mid)
        elif isinstance(method, C.Connection.TuneOk):
            if state is not AmqpState.TUNING:
                raise AmqpError(COMMAND_INVALID, "connection.tune-ok was not expected", mid)
            self._tune_ok(method, mid)
        elif isinstance(method, C.Connection.Open):
            if state is not AmqpState.OPENING:
                raise AmqpError(COMMAND_INVALID, "connection.open was not expected", mid)
            self._open(method, mid)
        elif isinstance(method, C.Connection.Close):
            self._enter_closing()
            self._release_channels()
            self._send(M.connection_close_ok())
            self._flush()
            self._await_client_close()
        elif isinstance(method, C.Connection.CloseOk):
            if self.transport is not None:
                self.transport.close()
        elif isinstance(method, (C.Connection.Blocked, C.Connection.Unblocked)):
            return  # only the server sends them; RabbitMQ ignores them too
        elif isinstance(method, C.Connection.UpdateSecret):
            if state is not AmqpState.OPEN:
                raise AmqpError(COMMAND_INVALID, "connection.update-secret was not expected", mid)
            self._update_secret(method, mid)
        elif state is AmqpState.OPEN:
            # RabbitMQ's words for a channel's method sent on channel 0
            raise AmqpError(CHANNEL_ERROR, "unexpected method in connection state running", mid)
        else:
            raise AmqpError(
                COMMAND_INVALID, f"{getattr(method, 'name', 'method')} on channel 0", mid
            )

    def _start_ok(self, method: C.Connection.StartOk, mid: int) -> None:
        props = method.client_properties
        self.client_properties = props if isinstance(props, dict) else {}
        mechanism = method.mechanism or ""
        response = method.response or ""
        raw = response.encode("utf-8") if isinstance(response, str) else bytes(response)
        authenticator = self.broker.authenticator
        if mechanism == MECHANISM_EXTERNAL:
            # The response is the authorization identity (usually empty): the user is the
            # one the client certificate names (tls_cert_login).
            self.state = AmqpState.AUTHENTICATING
            authzid = raw.decode("utf-8", errors="replace")
            self._auth_task = self._loop.create_task(self._authenticate_external(authzid, mid))
            return
        try:
            if mechanism == MECHANISM_PLAIN:
                parts = raw.split(b"\x00")
                if len(parts) != 3:
                    raise ValueError("PLAIN response is not authzid NUL user NUL password")
                username, password = parts[1].decode("utf-8"), parts[2].decode("utf-8")
            elif mechanism == MECHANISM_AMQPLAIN:
                table = decode_fields(raw, 0, len(raw))
                username, password = str(table.get("LOGIN", "")), str(table.get("PASSWORD", ""))
            else:
                reason = f"unknown authentication mechanism '{mechanism}'"
                authenticator.note_failure(
                    "", self.peer, MECHANISM_OTHER, PROTOCOL_NAME, reason, pair=None
                )
                raise AmqpError(COMMAND_INVALID, reason, mid)
        except (ValueError, FieldError, UnicodeDecodeError):
            self.state = AmqpState.AUTHENTICATING
            self._refuse_login(mechanism)
            return
        self.state = AmqpState.AUTHENTICATING
        self._auth_task = self._loop.create_task(
            self._authenticate(username, password, mechanism, mid)
        )

    async def _authenticate(self, username: str, password: str, mechanism: str, mid: int) -> None:
        tls, _ = self._tls_info()
        try:
            # PLAIN and AMQPLAIN carry the password in clear: refused without TLS from a
            # non-loopback address unless allow_plain_without_tls (security/auth.py).
            user = await self.broker.authenticator.authenticate_plain(
                username,
                password,
                self.peer_host,
                tls=tls,
                mechanism=mechanism,
                protocol=PROTOCOL_NAME,
                peer=self.peer,
            )
        except WharfError:
            self._refuse_login(mechanism)
            return
        self._logged_in(user)

    async def _authenticate_external(self, authzid: str, mid: int) -> None:
        _, cert = self._tls_info()
        try:
            user = await self.broker.authenticator.authenticate_external(
                cert, self.peer_host, authzid=authzid, protocol=PROTOCOL_NAME, peer=self.peer
            )
        except WharfError:
            self._refuse_login(MECHANISM_EXTERNAL)
            return
        self._logged_in(user)

    def _refuse_login(self, mechanism: str) -> None:
        if self.state is AmqpState.AUTHENTICATING:
            if not self.capabilities.get("authentication_failure_close"):
                # As RabbitMQ: a client that did not ask for the 403 (older clients do not
                # expect a close in the handshake) sees the socket close.
                log.info("%s: login refused; closing the socket", self.name)
                self._abort()
                return
            # authentication_failure_close: 403 then close (auth.py logged why); no
            # method named, as RabbitMQ's.
            self.close_with(
                AmqpError(
                    ACCESS_REFUSED,
                    f"Login was refused using authentication mechanism {mechanism}. "
                    "For details see the broker logfile.",
                    0,
                )
            )
            if self.transport is not None:
                self.transport.close()

    def _logged_in(self, user: User) -> None:
        if self.state is not AmqpState.AUTHENTICATING:
            return  # closed meanwhile
        self.username = user.name
        self._user_tags = tuple(user.tags)
        self.state = AmqpState.TUNING
        self._send(M.connection_tune(CHANNEL_MAX, FRAME_MAX_BYTES, self.settings.heartbeat_s))

    def _update_secret(self, method: C.Connection.UpdateSecret, mid: int) -> None:
        """RabbitMQ's connection.update-secret (made to refresh an OAuth 2 token). As
        RabbitMQ's internal user database, which keeps no expiring credentials, the new
        secret is not a password to check (clients' test suites send any string): the
        connection goes on as its user, with the user's current tags, while the user
        exists; a user deleted meanwhile is refused with 530 and the connection closes."""
        account = self.broker.authenticator.users.get(self.username)
        if account is None:
            raise AmqpError(
                NOT_ALLOWED,
                f"Secret update was refused for user '{self.username}': "
                f"user '{self.username}' no longer exists",
                mid,
            )
        self._user_tags = tuple(account.tags)
        log.info("%s: user %s updated its secret (%s)", self.name, self.username, method.reason)
        self._send(M.connection_update_secret_ok())

    def _tune_ok(self, method: C.Connection.TuneOk, mid: int) -> None:
        channel_max = method.channel_max or 0
        frame_max = method.frame_max or 0
        # RabbitMQ's rule: 0 asks for "no limit", which is above the server's maximum.
        for field, value, lowest, highest in (
            ("channel_max", channel_max, 1, CHANNEL_MAX),
            ("frame_max", frame_max, FRAME_MIN_BYTES, FRAME_MAX_BYTES),
        ):
            if value != 0 and value < lowest:
                raise AmqpError(
                    NOT_ALLOWED,
                    f"negotiated {field} = {value} is lower than the minimum allowed value "
                    f"({lowest})",
                    mid,
                )
            if value == 0 or value > highest:
                detail = " (no limit)" if value == 0 else ""
                raise AmqpError(
                    NOT_ALLOWED,
                    f"negotiated {field} = {value}{detail} is higher than the maximum allowed "
                    f"value ({highest})",
                    mid,
                )
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat_s = method.heartbeat or 0
        self._reader.frame_max = frame_max
        self.state = AmqpState.OPENING

    def _open(self, method: C.Connection.Open, mid: int) -> None:
        name = method.virtual_host or DEFAULT_VHOST
        broker = self.broker
        actor = Actor(self.username, self._user_tags, name, peer=self.peer, protocol=PROTOCOL_NAME)
        try:
            vhost = broker.vhosts.get(name)
        except WharfError:
            raise AmqpError(NOT_ALLOWED, f"vhost {name} not found", mid) from None
        try:
            broker.access.check_vhost(actor)
        except WharfError:
            raise AmqpError(
                NOT_ALLOWED,
                f"access to vhost '{name}' refused for user '{self.username}'",
                mid,
            ) from None
        broker.release_unauthenticated(self)
        refusal = broker.connection_limit_error(joining=self) or vhost.connection_limit_error(
            self.id
        )
        if refusal is not None:
            raise AmqpError(NOT_ALLOWED, refusal.message, mid)
        try:
            self.usage = broker.user_limits.admit(self.username)  # the user's max-connections
        except WharfError as exc:
            raise AmqpError(NOT_ALLOWED, exc.message, mid) from None
        self.vhost = name
        self.virtual_host = vhost
        self.topology = vhost.topology
        vhost.clients[self.id] = self
        self.core = broker.session(actor)
        self.state = AmqpState.OPEN
        self._opened = True
        self._send(M.connection_open_ok())
        self._start_heartbeats()
        log.info("%s opened from %s as %s (AMQP 0-9-1)", self.name, self.peer, self.username)
        broker.audit.event(AuditEvent.CONNECTION_OPEN, **self.audit_fields())

    def audit_fields(self, *, closed: bool = False) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "connection": self.name,
            "user": self.username,
            "vhost": self.vhost,
            "peer": self.peer,
            "protocol": PROTOCOL_NAME,
            "tls_version": tls_version_of(self.transport),
        }
        if closed:
            fields["duration_s"] = round(self._loop.time() - self.created_at, 3)
        return fields

    @property
    def capabilities(self) -> dict[str, Any]:
        caps = self.client_properties.get("capabilities")
        return caps if isinstance(caps, dict) else {}

    # -- resource alarms -------------------------------------------------------------------

    def set_blocked(self, alarms: set[str]) -> None:
        """The alarms changed. As RabbitMQ, a connection is blocked (and told so with
        connection.blocked, if it announced the capability) when it publishes during an
        alarm (block_reading), not when the alarm is raised: connections that only
        consume go on, and a client that opens during an alarm has registered its
        listener by the time it hears of it. When the alarms clear, a blocked connection
        is told connection.unblocked and read again."""
        if self.state is not AmqpState.OPEN or alarms:
            return
        if self._blocked_sent:
            self._blocked_sent = False
            self._send(M.connection_unblocked())
        if self._blocked_reading:
            self._blocked_reading = False
            # RabbitMQ pauses its heartbeat monitor while it does not read a blocked
            # connection: the client's heartbeats wait unread in the socket meanwhile.
            self.last_recv = self._loop.time()
            self._resume_reading_if_allowed()

    def block_reading(self) -> None:
        """A publish arrived during an alarm: say so (RabbitMQ's "low on memory"), then
        read nothing more until it clears."""
        self._blocked_reading = True
        alarms = self.broker.alarms
        if alarms and not self._blocked_sent and self.capabilities.get("connection.blocked"):
            self._blocked_sent = True
            self._send(M.connection_blocked(blocked_reason(alarms)))
        if self.transport is not None:
            self.transport.pause_reading()

    @property
    def reading_blocked(self) -> bool:
        return self._blocked_reading

    # -- the broker's hooks -------------------------------------------------------------

    def tick(self, now: float) -> None:
        state = self.state
        if state is AmqpState.CLOSING:
            if now - self._closing_since > CLOSE_OK_TIMEOUT_S and self.transport is not None:
                self.transport.abort()
            return
        if state in _BEFORE_OPEN:
            if now - self.created_at > self.settings.handshake_timeout_s:
                log.info("%s: AMQP handshake not completed in time; closing", self.name)
                self._abort()
            return
        if state is not AmqpState.OPEN:
            return
        timeout_s = self.settings.ack_timeout_ms / 1000.0
        for ch in list(self.open_channels.values()):
            ch.check_ack_timeout(now, timeout_s)

    # -- heartbeats ----------------------------------------------------------------------

    def _start_heartbeats(self) -> None:
        hb = self.heartbeat_s
        if not hb:
            return
        # As RabbitMQ's first checks: the first sends a heartbeat whatever was written, and
        # the first counts the handshake as read (a client silent since connection.open
        # is closed at 3T).
        self._writes_seen = -1
        self._reads_seen = -1
        loop = self._loop
        self._hb_send_timer = loop.call_later(hb / HEARTBEAT_SENDS_PER_INTERVAL, self._hb_send)
        self._hb_recv_timer = loop.call_later(hb, self._hb_check)

    def _hb_send(self) -> None:
        """Every T/2: a heartbeat unless something was written since the last check (or is
        about to be: frames in the buffer go out at this iteration's flush)."""
        self._hb_send_timer = None
        if self.state is not AmqpState.OPEN:
            return
        if self._writes_seen < 0 or (self._writes == self._writes_seen and not self._wbuf):
            self._send(HEARTBEAT_FRAME)
            self._flush()
        # The heartbeat just written does not count as traffic for the next check.
        self._writes_seen = self._writes
        self._hb_send_timer = self._loop.call_later(
            self.heartbeat_s / HEARTBEAT_SENDS_PER_INTERVAL, self._hb_send
        )

    def _hb_check(self) -> None:
        """Every T: anything read since the last check?  Checks made while the socket is
        not read (a blocked publisher, a publish quota's wait, a write buffer over its
        high mark) do not count: the client's heartbeats wait unread in the socket, as
        RabbitMQ pauses its monitor.  The reads of a stalled event loop are handled
        before its timers, so a busy broker does not take its own delay for silence."""
        self._hb_recv_timer = None
        if self.state is not AmqpState.OPEN:
            return
        hb = self.heartbeat_s
        backlog = (0, 0) if self.writable else self._backlog()
        if (
            self._reads != self._reads_seen
            or self._quota_read_timer is not None
            or self._blocked_reading
            or (not self.writable and self._peer_moved(backlog))
        ):
            self._silent_checks = 0
        else:
            self._silent_checks += 1
            if self._silent_checks >= MISSED_HEARTBEAT_CHECKS:
                log.warning(
                    "%s: missed heartbeats from client, timeout: %d s; closing", self.name, hb
                )
                # The peer is gone: what is still buffered for it is dropped, not flushed
                # (a close would wait for a reader that is not there).
                self._enter_closing()
                if self.transport is not None:
                    self.transport.abort()
                return
        self._reads_seen = self._reads
        self._backlog_seen = backlog
        self._hb_recv_timer = self._loop.call_later(hb, self._hb_check)

    def _peer_moved(self, backlog: tuple[int, int]) -> bool:
        """While the write buffer is over its high mark Wharf does not read the socket (as
        RabbitMQ stops reading under flow control): the client is alive if bytes it sent
        wait unread in the socket (more than at the last check), or if it took some of
        what Wharf writes (the write buffer shrank). A dead peer does neither, and is
        closed as a silent one."""
        unread, unsent = backlog
        unread_seen, unsent_seen = self._backlog_seen
        return unread != unread_seen or unsent < unsent_seen

    def _backlog(self) -> tuple[int, int]:
        """(bytes received and not read yet, bytes buffered to write), 0 when unknown."""
        transport = self.transport
        if transport is None:
            return (0, 0)
        unread = 0
        sock = transport.get_extra_info("socket")
        if sock is not None:
            count = array.array("i", [0])
            try:
                fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
                unread = count[0]
            except OSError:
                pass
        return (unread, transport.get_write_buffer_size())

    def relocate(self, old: Segment) -> int:
        return sum(ch.deliveries.relocate(old) for ch in self.open_channels.values())

    def store_committed(self, batch: int) -> bool:
        waiting = False
        for ch in list(self.confirming):
            if ch.confirms is not None and ch.confirms.store_committed(batch):
                waiting = True
        return waiting

    def await_store(self) -> None:
        self.broker.await_store(self)

    def durable_batch(self) -> int:
        store = self.virtual_host.store
        return store.durable_batch if store is not None else 0
