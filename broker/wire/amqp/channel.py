"""One AMQP channel: a consumer session on the core with RabbitMQ's channel semantics.

A channel owns its consumers, its ``Deliveries`` (delivery tags are per channel, and
what is unacked when the channel closes is requeued), its basic.qos limits and, after
confirm.select, its ``Confirms`` (the native adapter's confirm logic: cumulative, in
order, after the store's fsync for persistent messages).  It assembles each
basic.publish with its content header and body frames before calling the core.

Errors: a Wharf error from the core becomes an AMQP exception (errors.py); a soft one
closes this channel with channel.close (nothing more is handled on it until the
client's close-ok), a hard one is raised to the connection, which closes.
"""

from __future__ import annotations

import decimal
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from pamqp import commands as C

from wharf.protocol import frames as F
from wharf.protocol.errors import NotFound, PreconditionFailed, ResourceError, WharfError

from ...core.deliveries import Deliveries
from ...core.exchanges import EXCHANGE_TYPES
from ...core.names import check_name_length
from ...core.policies.queue_types import with_delivery_count
from ...core.queues import Consumer, Message
from ...core.replies import REPLY_TO_PREFIX, REPLY_TO_QUEUE, ReplyRegistry
from ...core.transactions import ACK, REJECT, REQUEUE, CoreTransaction
from ..native.confirms import Confirms
from . import methods as M
from .errors import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    AmqpError,
    from_wharf,
)
from .fields import FieldError
from .frames import (
    BASIC_ACK,
    BASIC_PUBLISH,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    Ack,
    Publish,
    content_frames,
    decode_method,
    deliver_args,
    delivery,
    shortstr,
)
from .properties import (
    BASIC_CLASS,
    PropertyError,
    content_header,
    decode_properties,
    encode_properties,
    parse_content_header,
)

if TYPE_CHECKING:
    from ...core.publish import PublishResult
    from .connection import AmqpConnection

log = logging.getLogger("wharf.amqp")

_CHANNEL_CLOSE: Final = C.Channel.Close.index
_CHANNEL_CLOSE_OK: Final = C.Channel.CloseOk.index
# What a channel waits for after basic.publish.
_EXPECT_METHOD: Final = 0
_EXPECT_HEADER: Final = 1
_EXPECT_BODY: Final = 2


class ChannelConsumer(Consumer):
    """A consumer on an AMQP channel: its credit also respects the channel's global
    prefetch (basic.qos global=true, shared by the channel's consumers)."""

    __slots__ = ("wire_tag",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire_tag = shortstr(self.tag)  # encoded once for every basic.deliver

    def credit(self) -> int:
        n = super().credit()
        sink = self.sink
        assert isinstance(sink, Channel)
        limit = sink.global_prefetch
        if limit and not self.no_ack:
            n = min(n, limit - len(sink.deliveries))
        return n


def plain_arguments(value: Any) -> Any:
    """pamqp's decoded table values as Wharf keeps arguments (JSON- and msgpack-safe)."""
    if isinstance(value, dict):
        return {str(k): plain_arguments(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_arguments(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value)
    return value


class Channel:
    def __init__(self, conn: AmqpConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        broker = conn.broker
        self.counters = broker.stats.protocols["amqp"]
        self.deliveries = Deliveries(self.counters, conn.loop_time)
        self.consumers: dict[str, ChannelConsumer] = {}
        self.writable = conn.can_deliver
        # channel.flow active=false from the client: no deliveries until active=true.
        self.flow_active = True
        self.closing = False  # channel.close sent, waiting for close-ok
        self.prefetch_count = 0  # basic.qos global=false: each consumer's limit
        self.global_prefetch = 0  # basic.qos global=true: the channel's unacked limit
        self.confirms: Confirms | None = None
        # tx.select: the core transaction holding publishes and settlements until
        # tx.commit (core/transactions.py), which applies them as one unit.
        self.tx: CoreTransaction | None = None
        # Publishes of this read not yet handed to the core (flush_publishes).
        self._batch: list[bytes] = []
        self._batch_key: tuple[str, str, bool] = ("", "", False)
        self._batch_props: dict[str, Any] | None = None
        self._publish_seq = 0
        self.published = 0  # messages published on it (the API's message_stats)
        self.last_queue = ""
        # While this channel's queue.delete runs: the basic.cancel frames for its own
        # consumers of the queue, sent after queue.delete-ok.
        self._held_cancels: list[bytes] | None = None
        # Direct reply-to: the reply consumer's tag and this channel's reply name
        # (core/replies.py), and the last publish properties rewritten to carry the name.
        self.reply_tag: str | None = None
        self.reply_name = ""
        self._reply_src: dict[str, Any] | None = None
        self._reply_props: dict[str, Any] | None = None
        # The basic.publish being assembled, its properties and body parts.
        self._expect = _EXPECT_METHOD
        self._pending: Publish | None = None
        self._props: dict[str, Any] | None = None
        self._size = 0
        self._parts: list[bytes] = []
        self._received = 0
        # The last content header's raw properties and what they decoded to (publishers
        # mostly send the same properties every time), and the same for deliveries.
        self._in_raw = b"\x00\x00"
        self._in_props: dict[str, Any] | None = None
        self._out_props: dict[str, Any] | None = None
        self._out_raw = b"\x00\x00"
        self._handlers: dict[int, Callable[[int, Any], None]] = {
            C.Basic.Nack.index: self._on_nack,
            C.Basic.Reject.index: self._on_reject,
            C.Basic.Consume.index: self._on_consume,
            C.Basic.Cancel.index: self._on_cancel,
            C.Basic.Get.index: self._on_get,
            C.Basic.Qos.index: self._on_qos,
            C.Basic.Recover.index: self._on_recover,
            C.Basic.RecoverAsync.index: self._on_recover,
            C.Exchange.Declare.index: self._on_exchange_declare,
            C.Exchange.Delete.index: self._on_exchange_delete,
            C.Exchange.Bind.index: self._on_exchange_bind,
            C.Exchange.Unbind.index: self._on_exchange_unbind,
            C.Queue.Declare.index: self._on_queue_declare,
            C.Queue.Bind.index: self._on_queue_bind,
            C.Queue.Unbind.index: self._on_queue_unbind,
            C.Queue.Purge.index: self._on_queue_purge,
            C.Queue.Delete.index: self._on_queue_delete,
            C.Confirm.Select.index: self._on_confirm_select,
            C.Tx.Select.index: self._on_tx_select,
            C.Tx.Commit.index: self._on_tx_commit,
            C.Tx.Rollback.index: self._on_tx_rollback,
            C.Channel.Flow.index: self._on_flow,
            C.Channel.FlowOk.index: self._ignore,
            C.Channel.Open.index: self._on_second_open,
            C.Channel.Close.index: self._on_close,
            C.Channel.CloseOk.index: self._ignore,
        }

    # -- frames --------------------------------------------------------------------------

    def handle_frame(self, ftype: int, payload: bytes) -> None:
        if self.closing:
            self._while_closing(ftype, payload)
            return
        expect = self._expect
        if expect == _EXPECT_METHOD:
            if ftype != FRAME_METHOD:
                raise AmqpError(
                    UNEXPECTED_FRAME, "expected method frame, got non method frame instead"
                )
            mid, method = decode_method(payload)
            try:
                if mid == BASIC_PUBLISH:
                    self._on_publish(mid, method)
                elif mid == BASIC_ACK:
                    self._on_ack(mid, method)
                else:
                    handler = self._handlers.get(mid)
                    if handler is None:
                        raise AmqpError(
                            NOT_IMPLEMENTED,
                            f"{getattr(method, 'name', 'method')} is not supported",
                            mid,
                        )
                    handler(mid, method)
            except WharfError as exc:
                self._fail(from_wharf(exc, mid, self.conn.vhost))
            except AmqpError as exc:
                if not exc.method:
                    exc.method = mid  # channel.close names the method that failed
                self._fail(exc)
            return
        mid = BASIC_PUBLISH
        if expect == _EXPECT_HEADER:
            if ftype != FRAME_HEADER:
                raise AmqpError(
                    UNEXPECTED_FRAME,
                    f"expected content header for class {BASIC_CLASS}, "
                    "got non content header frame instead",
                    mid,
                )
            self._on_content_header(payload)
            return
        if ftype != FRAME_BODY:
            raise AmqpError(
                UNEXPECTED_FRAME, "expected content body, got non content body frame instead", mid
            )
        received = self._received + len(payload)
        if received > self._size:
            raise AmqpError(
                FRAME_ERROR,
                f"content body of {received} bytes is larger than the {self._size} bytes "
                "announced in its content header",
                mid,
            )
        self._received = received
        self._parts.append(payload)
        if received == self._size:
            parts = self._parts
            self._parts = []
            self._complete_publish(parts[0] if len(parts) == 1 else b"".join(parts))

    def _fail(self, exc: AmqpError) -> None:
        if exc.hard:
            raise exc
        self.close_soft(exc)

    def _while_closing(self, ftype: int, payload: bytes) -> None:
        """After channel.close, everything but close and close-ok is dropped."""
        if ftype != FRAME_METHOD or len(payload) < 4:
            return
        mid = int.from_bytes(payload[:4], "big")
        if mid == _CHANNEL_CLOSE:
            self.conn.send(M.channel_close_ok(self.number))
            self.conn.channel_closed(self)
        elif mid == _CHANNEL_CLOSE_OK:
            self.conn.channel_closed(self)

    def close_soft(self, exc: AmqpError) -> None:
        """A channel exception: channel.close with RabbitMQ's code and text."""
        log.info("%s channel %d: %s", self.conn.name, self.number, exc.reply_text())
        self.conn.send(M.close(self.number, exc.code, exc.reply_text(), exc.method))
        self.closing = True
        self.release()

    def release(self) -> None:
        """The channel ends: its consumers go, its unacked deliveries are requeued."""
        self._expect = _EXPECT_METHOD
        self._pending = None
        self._parts = []
        self._batch = []
        self.conn.batching.discard(self)
        if self.tx is not None:
            self.tx.rollback()  # an open transaction is rolled back
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self._end_reply_consumer()
        self.deliveries.requeue_all(None)
        if self.confirms is not None:
            self.confirms.close()
        self.conn.confirming.discard(self)

    # -- channel class ------------------------------------------------------------------

    def _ignore(self, mid: int, method: Any) -> None:
        return

    def _on_second_open(self, mid: int, method: Any) -> None:
        raise AmqpError(CHANNEL_ERROR, "second 'channel.open' seen", mid)

    def _on_close(self, mid: int, method: Any) -> None:
        self.release()
        self.conn.send(M.channel_close_ok(self.number))
        self.conn.channel_closed(self)

    def _on_flow(self, mid: int, method: C.Channel.Flow) -> None:
        """The client stops (active=false) or resumes deliveries to this channel's
        consumers; unacked deliveries stay, basic.get still answers."""
        self.flow_active = bool(method.active)
        if self.flow_active:
            self.resume_dispatch()
        else:
            self.writable = False  # the consumers' credit reads as 0
        self.conn.send(M.channel_flow_ok(self.number, self.flow_active))

    # -- publishing ------------------------------------------------------------------------

    def _on_publish(self, mid: int, method: Publish) -> None:
        if method.immediate:
            raise AmqpError(NOT_IMPLEMENTED, "immediate=true", mid)
        self._pending = method
        self._expect = _EXPECT_HEADER

    def _on_content_header(self, payload: bytes) -> None:
        mid = BASIC_PUBLISH
        try:
            class_id, size, raw = parse_content_header(payload)
        except FieldError as exc:
            raise AmqpError(FRAME_ERROR, str(exc), mid) from None
        if class_id != BASIC_CLASS:
            raise AmqpError(
                UNEXPECTED_FRAME,
                f"expected content header for class {BASIC_CLASS}, "
                f"got one for class {class_id} instead",
                mid,
            )
        if raw == self._in_raw:
            props = self._in_props
        else:
            try:
                props = decode_properties(raw)
            except FieldError as exc:
                raise AmqpError(SYNTAX_ERROR, f"invalid content header: {exc}", mid) from None
            except PropertyError as exc:
                self._expect = _EXPECT_METHOD
                self.close_soft(AmqpError(PRECONDITION_FAILED, str(exc), mid))
                return
            self._in_raw = raw
            self._in_props = props
        limit = self.conn.settings.max_message_bytes
        if size > limit:
            self._expect = _EXPECT_METHOD
            self.close_soft(
                AmqpError(
                    PRECONDITION_FAILED,
                    f"message size {size} is larger than configured max size {limit}",
                    mid,
                )
            )
            return
        self._props = props
        self._size = size
        self._received = 0
        if size == 0:
            self._complete_publish(b"")
        else:
            self._expect = _EXPECT_BODY

    def _complete_publish(self, body: bytes) -> None:
        self._expect = _EXPECT_METHOD
        method = self._pending
        assert method is not None
        self._pending = None
        props = self._props
        if props is not None and props.get("reply_to") == REPLY_TO_QUEUE:
            props = self._with_reply_name(props)
            if props is None:
                return  # no reply consumer: the channel closed
        if self.tx is not None:
            self._tx_publish(method, props, body)
            return
        # Consecutive publishes with the same exchange, routing key, flag and properties
        # go to the core as one batch (one routing, one enqueue), as the native
        # PUBLISH_MANY; the connection flushes the batch before any other method frame
        # and at the end of each read, so the order of operations is kept.
        key = (method.exchange, method.routing_key, method.mandatory)
        batch = self._batch
        if batch:
            if key == self._batch_key and props is self._batch_props:
                batch.append(body)
                return
            self.flush_publishes()
            if self.closing:
                return
            batch = self._batch
        self._batch_key = key
        self._batch_props = props
        batch.append(body)
        self.conn.batching.add(self)

    def flush_publishes(self) -> None:
        """Hand the batched publishes to the core."""
        bodies = self._batch
        if not bodies:
            return
        self._batch = []
        self.conn.batching.discard(self)
        self._publish_many(self._batch_key, self._batch_props, bodies)

    def _publish_many(
        self, key: tuple[str, str, bool], props: dict[str, Any] | None, bodies: list[bytes]
    ) -> None:
        conn = self.conn
        if conn.broker.alarms and not conn.reading_blocked:
            conn.block_reading()
        confirms = self.confirms
        n = len(bodies)
        self.published += n
        seq = 0
        if confirms is not None:
            seq = self._publish_seq + 1
            self._publish_seq += n
        exchange, routing_key, mandatory = key
        usage = conn.usage
        if usage is not None and usage.produce is not None:
            conn.quota_produced(sum(map(len, bodies)))
        try:
            # A reply name as routing key reaches its reply consumer (core/replies.py).
            res = conn.core.publish(exchange, routing_key, props, bodies)
        except ResourceError as exc:
            if confirms is not None:
                confirms.nack(seq, n, exc)  # the store failed: nack, as RabbitMQ
                return
            self._fail(from_wharf(exc, BASIC_PUBLISH, conn.vhost))
            return
        except WharfError as exc:
            self._fail(from_wharf(exc, BASIC_PUBLISH, conn.vhost))
            return
        self.counters.published += n
        refused = res.refused
        if refused:
            # x-overflow reject-publish refused the last ``refused``: nacks in confirm
            # mode, else dropped.
            if confirms is not None:
                confirms.nack(seq + n - refused, refused, ResourceError("queue is full"))
            n -= refused
        elif res.unroutable and mandatory:
            raw = self._encode_props(props)
            for body in bodies:
                conn.send(M.basic_return(self.number, NO_ROUTE, "NO_ROUTE", exchange, routing_key))
                header = content_header(raw, len(body))
                conn.send_many(content_frames(self.number, header, body, conn.frame_max))
        if confirms is not None and n:
            confirms.published(seq, n, res.store_batch, res.log_parts)

    # -- direct reply-to (core/replies.py) -----------------------------------------------

    def _with_reply_name(self, props: dict[str, Any]) -> dict[str, Any] | None:
        """``props`` with reply_to = this channel's reply name (the same dict for the same
        properties, so publishes still batch); None after closing the channel with 406
        when it has no reply consumer, as RabbitMQ."""
        if not self.reply_name:
            self._fail(
                AmqpError(PRECONDITION_FAILED, "fast reply consumer does not exist", BASIC_PUBLISH)
            )
            return None
        if props is not self._reply_src:
            self._reply_src = props
            self._reply_props = {**props, "reply_to": self.reply_name}
        return self._reply_props

    @property
    def _replies(self) -> ReplyRegistry:
        """The reply names of the connection's vhost."""
        return self.conn.core.topology.publisher.replies

    def deliver_replies(
        self, name: str, props: dict[str, Any] | None, bodies: list[bytes] | tuple[bytes, ...]
    ) -> None:
        """basic.deliver to the reply consumer of a reply published on any protocol (no-ack:
        the tags are never settled)."""
        tag_text = self.reply_tag
        assert tag_text is not None
        conn = self.conn
        tag = self.deliveries.reserve_tags(len(bodies))
        raw = self._encode_props(props)
        wire_tag = shortstr(tag_text)
        out: list[bytes] = []
        for body in bodies:
            args = deliver_args(wire_tag, tag, False, "", name)
            out.append(delivery(self.number, args, raw, body, conn.frame_max))
            tag += 1
        conn.send_many(out)
        conn.quota_consumed(sum(map(len, bodies)))

    def _start_reply_consumer(self, mid: int, method: C.Basic.Consume) -> None:
        if not method.no_ack:
            raise AmqpError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", mid)
        if self.reply_tag is not None:
            raise AmqpError(PRECONDITION_FAILED, "reply consumer already set", mid)
        tag = method.consumer_tag or f"amq.ctag-{secrets.token_urlsafe(16)}"
        check_name_length("consumer tag", tag)
        if tag in self.consumers:
            raise AmqpError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", mid)
        self.reply_tag = tag
        self.reply_name = self._replies.register(self)
        if not method.nowait:
            self.conn.send(M.basic_consume_ok(self.number, tag))

    def _end_reply_consumer(self) -> None:
        if self.reply_name:
            self._replies.unregister(self.reply_name)
        self.reply_tag = None
        self.reply_name = ""
        self._reply_src = self._reply_props = None

    def _encode_props(self, props: dict[str, Any] | None) -> bytes:
        if props is self._out_props:
            return self._out_raw
        raw = encode_properties(props)
        self._out_props = props
        self._out_raw = raw
        return raw

    # -- confirms (native/confirms.py, with AMQP frames) ------------------------------------

    def _on_confirm_select(self, mid: int, method: C.Confirm.Select) -> None:
        conn = self.conn
        if self.tx is not None:
            raise AmqpError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", mid)
        if self.confirms is None:
            self.confirms = Confirms(
                send_frame=self._confirm_frame,
                send_error=self._confirm_error,
                schedule_flush=conn.schedule_flush,
                loop=conn.loop,
                await_store=conn.await_store,
                durable_batch=conn.durable_batch,
                stats=conn.broker.stats,
            )
            conn.confirming.add(self)
        if not method.nowait:
            conn.send(M.confirm_select_ok(self.number))

    def _confirm_frame(self, frame: F.Frame) -> None:
        if isinstance(frame, F.PublishNack):
            self.conn.send(M.basic_nack(self.number, frame.seq, False, False))

    def _confirm_error(self, request_id: int, exc: WharfError) -> None:
        return  # unnumbered publishes are not confirmed (no confirm mode)

    def take_confirms(self) -> bytes | None:
        """At the connection's flush: a cumulative basic.ack up to the last ready."""
        confirms = self.confirms
        if confirms is None or self.closing:
            return None
        up_to = confirms.take_ready()
        return M.basic_ack(self.number, up_to, True) if up_to else None

    # -- transactions: publishes and settlements held until tx.commit -------------------

    def _on_tx_select(self, mid: int, method: Any) -> None:
        if self.confirms is not None:
            raise AmqpError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", mid)
        if self.tx is None:
            self.tx = CoreTransaction(self.conn.core, self.deliveries)
        self.conn.send(M.tx_select_ok(self.number))

    def _on_tx_commit(self, mid: int, method: Any) -> None:
        tx = self.tx
        if tx is None:
            raise AmqpError(PRECONDITION_FAILED, "channel is not transactional", mid)
        conn = self.conn
        try:
            batch = tx.commit()
        except PreconditionFailed as exc:
            raise AmqpError(PRECONDITION_FAILED, exc.message, mid) from None
        except WharfError as exc:
            self._fail(from_wharf(exc, BASIC_PUBLISH, conn.vhost))
            return
        if self.closing:
            return  # a mandatory return could not be sent: the channel closed
        store = conn.virtual_host.store
        if not batch or store is None:
            conn.send(M.tx_commit_ok(self.number))
            return
        # As RabbitMQ: commit-ok once the commit's persistent messages and acks are on
        # disk (one group commit: core/transactions.py).
        store.when_durable(batch, lambda ok: self._tx_durable(ok, mid))

    def _tx_durable(self, ok: bool, mid: int) -> None:
        if self.closing or self.conn.open_channels.get(self.number) is not self:
            return
        if ok:
            self.conn.send(M.tx_commit_ok(self.number))
        else:
            exc = ResourceError("message store write failed; the commit is not durable")
            self.close_soft(from_wharf(exc, mid, self.conn.vhost))

    def _on_tx_rollback(self, mid: int, method: Any) -> None:
        if self.tx is None:
            raise AmqpError(PRECONDITION_FAILED, "channel is not transactional", mid)
        self.tx.rollback()
        self.conn.send(M.tx_rollback_ok(self.number))

    def _tx_publish(self, method: Publish, props: dict[str, Any] | None, body: bytes) -> None:
        """basic.publish inside a transaction: checked now, routed at tx.commit."""
        tx = self.tx
        assert tx is not None
        conn = self.conn
        if conn.broker.alarms and not conn.reading_blocked:
            conn.block_reading()
        usage = conn.usage
        if usage is not None and usage.produce is not None:
            conn.quota_produced(len(body))
        key = (method.exchange, method.routing_key, method.mandatory)
        try:
            tx.publish(
                method.exchange,
                method.routing_key,
                props,
                [body],
                lambda res: self._tx_published(res, key, props, body),
            )
        except WharfError as exc:
            self._fail(from_wharf(exc, BASIC_PUBLISH, conn.vhost))

    def _tx_published(
        self,
        res: PublishResult,
        key: tuple[str, str, bool],
        props: dict[str, Any] | None,
        body: bytes,
    ) -> None:
        """A held publish was routed at tx.commit: a mandatory one that reached no queue
        comes back (x-overflow refusals are dropped: no confirms in tx mode)."""
        exchange, routing_key, mandatory = key
        if res.unroutable and mandatory and not res.refused:
            conn = self.conn
            conn.send(M.basic_return(self.number, NO_ROUTE, "NO_ROUTE", exchange, routing_key))
            header = content_header(self._encode_props(props), len(body))
            conn.send_many(content_frames(self.number, header, body, conn.frame_max))

    def _tx_settle(self, mid: int, tags: list[int], outcome: str) -> None:
        """An ack/nack/reject inside a transaction: its tags are checked now (unknown, or
        already settled in this transaction: 406) and applied at tx.commit."""
        assert self.tx is not None
        try:
            self.tx.settle(tags, outcome)
        except PreconditionFailed as exc:
            raise AmqpError(PRECONDITION_FAILED, exc.message, mid) from None

    # -- delivering (the core's DeliverySink) ------------------------------------------------

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None:
        tag = self.deliveries.deliver(consumer, batch)
        conn = self.conn
        number = self.number
        frame_max = conn.frame_max
        wire_tag = consumer.wire_tag if isinstance(consumer, ChannelConsumer) else b"\x00"
        encode_props = self._encode_props
        out: list[bytes] = []
        append = out.append
        if consumer.queue.keeps_all:
            for m in batch:
                redelivered = m.delivery_count > 1
                args = deliver_args(wire_tag, tag, redelivered, m.exchange, m.routing_key)
                props = m.properties
                if redelivered:
                    # RabbitMQ 3.10 marks a quorum queue's redeliveries (not first ones).
                    props = with_delivery_count(props, m.delivery_count - 1)
                append(delivery(number, args, encode_props(props), m.body, frame_max))
                tag += 1
        else:
            for m in batch:
                args = deliver_args(wire_tag, tag, m.delivery_count > 1, m.exchange, m.routing_key)
                append(delivery(number, args, encode_props(m.properties), m.body, frame_max))
                tag += 1
        conn.send_many(out)
        # The window nudge needs heartbeats (window_filled): without them, no credit
        # to compute for each batch.
        if conn.heartbeat_s and not consumer.no_ack and consumer.credit() <= 0:
            conn.window_filled()
        usage = conn.usage
        if usage is not None and usage.consume is not None:
            conn.quota_consumed(sum(len(m.body) for m in batch))

    def server_cancel(self, consumer: Consumer, code: int, reason: str) -> None:
        """The broker ends a consumer (its queue was deleted)."""
        if self.consumers.get(consumer.tag) is not consumer:
            return
        del self.consumers[consumer.tag]
        consumer.queue.remove_consumer(consumer)
        if not self.closing and self.conn.capabilities.get("consumer_cancel_notify") is True:
            frame = M.basic_cancel(self.number, consumer.tag)
            if self._held_cancels is not None:
                self._held_cancels.append(frame)
            else:
                self.conn.send(frame)

    def resume_dispatch(self) -> None:
        self.writable = self.conn.can_deliver and self.flow_active
        if not self.writable:
            return
        for c in list(self.consumers.values()):
            c.queue.schedule_dispatch()

    def check_ack_timeout(self, now: float, timeout_s: float) -> None:
        if self.closing or self.deliveries.overdue(now, timeout_s) is None:
            return
        ms = self.conn.settings.ack_timeout_ms
        self.close_soft(
            AmqpError(
                PRECONDITION_FAILED,
                f"delivery acknowledgement on channel {self.number} timed out. "
                f"Timeout value used: {ms} ms. This timeout value can be configured, see "
                "consumers doc guide to learn more",
            )
        )

    # -- consumers -------------------------------------------------------------------------

    def _queue_name(self, name: str | None) -> str:
        """RabbitMQ's rule: an empty queue name means the channel's last declared queue."""
        if name:
            return name
        if not self.last_queue:
            raise AmqpError(NOT_FOUND, "no previously declared queue")
        return self.last_queue

    def _on_consume(self, mid: int, method: C.Basic.Consume) -> None:
        conn = self.conn
        if method.queue == REPLY_TO_QUEUE:
            self._start_reply_consumer(mid, method)
            return
        queue = conn.core.queue_to_read(self._queue_name(method.queue), conn, "basic.consume")
        limit = conn.settings.max_consumers_per_connection
        if sum(len(ch.consumers) for ch in conn.open_channels.values()) >= limit:
            raise AmqpError(NOT_ALLOWED, f"max_consumers_per_connection={limit} reached", mid)
        arguments = plain_arguments(method.arguments or {})
        prio = arguments.get("x-priority", 0)
        if type(prio) is not int:
            raise AmqpError(
                PRECONDITION_FAILED, "consumer argument x-priority must be an integer", mid
            )
        tag = method.consumer_tag or f"amq.ctag-{secrets.token_urlsafe(16)}"
        check_name_length("consumer tag", tag)
        if tag in self.consumers or tag == self.reply_tag:
            raise AmqpError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", mid)
        queue.check_new_consumer(bool(method.exclusive))
        no_ack = bool(method.no_ack)
        consumer = ChannelConsumer(
            tag, queue, self, self.prefetch_count, no_ack, bool(method.exclusive), arguments, 0
        )
        self.consumers[tag] = consumer
        if not method.nowait:
            conn.send(M.basic_consume_ok(self.number, tag))
        queue.add_consumer(consumer)

    def _on_cancel(self, mid: int, method: C.Basic.Cancel) -> None:
        tag = method.consumer_tag or ""
        if tag and tag == self.reply_tag:
            self._end_reply_consumer()
        consumer = self.consumers.pop(tag, None)
        if consumer is not None:
            # Unacked deliveries stay with the channel and can still be acked.
            consumer.queue.remove_consumer(consumer)
        if not method.nowait:
            self.conn.send(M.basic_cancel_ok(self.number, tag))

    def _on_qos(self, mid: int, method: C.Basic.Qos) -> None:
        if method.prefetch_size:
            raise AmqpError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({method.prefetch_size})", mid)
        count = method.prefetch_count or 0
        if method.global_:
            self.global_prefetch = count
        else:
            # Per consumer, and the channel's existing consumers take the new count too
            # (RabbitMQ keeps theirs; LavinMQ and the spec's channel-wide reading do not).
            # Celery raises its consumer's prefetch with global=false for every task it
            # holds for a countdown/ETA: with RabbitMQ's rule those tasks would use up the
            # prefetch and stall the worker until their ETA (docs/amqp.md).
            self.prefetch_count = count
            for c in self.consumers.values():
                c.prefetch = count
        for c in self.consumers.values():
            c.queue.schedule_dispatch()
        self.conn.send(M.basic_qos_ok(self.number))

    def _on_get(self, mid: int, method: C.Basic.Get) -> None:
        conn = self.conn
        queue = conn.core.queue_to_read(self._queue_name(method.queue), conn, "basic.get")
        queue.last_used = time.monotonic()
        msg = queue.take()
        if msg is None:
            conn.send(M.basic_get_empty(self.number))
            return
        tag = self.deliveries.get(queue, msg, bool(method.no_ack))
        body = msg.body
        conn.send(
            M.basic_get_ok(
                self.number,
                tag,
                msg.delivery_count > 1,
                msg.exchange,
                msg.routing_key,
                queue.ready_count,
            )
        )
        props = msg.properties
        if queue.keeps_all:
            # RabbitMQ 3.10's basic.get from a quorum queue carries the count, 0 included.
            props = with_delivery_count(props, msg.delivery_count - 1)
        header = content_header(self._encode_props(props), len(body))
        conn.send_many(content_frames(self.number, header, body, conn.frame_max))
        conn.quota_consumed(len(body), answer=True)

    # -- acks --------------------------------------------------------------------------------

    def _tags(self, mid: int, tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [tag]
        deliveries = self.deliveries
        tags = deliveries.tags(tag)
        if not tags and tag > deliveries.last_tag:
            raise AmqpError(PRECONDITION_FAILED, f"unknown delivery tag {tag}", mid)
        # A cumulative ack or nack of a tag this channel delivered, with nothing left
        # unsettled up to it, settles nothing and is accepted (RabbitMQ closes the
        # channel with 406).  Consumers that ack "everything up to the last tag seen"
        # after every socket read repeat that ack when a read carries only the rest of
        # a delivery whose basic.deliver came in the read before; a fast broker fills
        # the prefetch window in one burst, and the socket splits it (docs/amqp.md).
        return tags

    def _settle(self, mid: int, tags: list[int]) -> list[Any]:
        entries, unknown = self.deliveries.settle(tags)
        if unknown is not None:
            # As RabbitMQ: nothing of a settlement naming an unknown tag applies (the
            # channel closes, and its unacked deliveries are requeued).
            self.deliveries.reject(entries, True)
            raise AmqpError(PRECONDITION_FAILED, f"unknown delivery tag {unknown}", mid)
        return entries

    def _on_ack(self, mid: int, method: Ack) -> None:
        tags = self._tags(mid, method.delivery_tag, method.multiple)
        if self.tx is not None:
            self._tx_settle(mid, tags, ACK)
            return
        self.deliveries.ack(self._settle(mid, tags))

    def _on_nack(self, mid: int, method: C.Basic.Nack) -> None:
        tags = self._tags(mid, method.delivery_tag or 0, bool(method.multiple))
        requeue = bool(method.requeue)
        if self.tx is not None:
            self._tx_settle(mid, tags, REQUEUE if requeue else REJECT)
            return
        self.deliveries.reject(self._settle(mid, tags), requeue)

    def _on_reject(self, mid: int, method: C.Basic.Reject) -> None:
        tags = [method.delivery_tag or 0]
        requeue = bool(method.requeue)
        if self.tx is not None:
            self._tx_settle(mid, tags, REQUEUE if requeue else REJECT)
            return
        self.deliveries.reject(self._settle(mid, tags), requeue)

    def _on_recover(self, mid: int, method: C.Basic.Recover | C.Basic.RecoverAsync) -> None:
        if not method.requeue:
            raise AmqpError(NOT_IMPLEMENTED, "requeue=false", mid)
        self.deliveries.requeue_all(None)
        if isinstance(method, C.Basic.Recover):
            self.conn.send(M.basic_recover_ok(self.number))

    # -- exchanges -------------------------------------------------------------------------

    def _on_exchange_declare(self, mid: int, method: C.Exchange.Declare) -> None:
        name = method.exchange or ""
        type_ = method.exchange_type or "direct"
        if not method.passive and type_ not in EXCHANGE_TYPES:
            raise AmqpError(COMMAND_INVALID, f"unknown exchange type '{type_}'", mid)
        self.conn.core.declare_exchange(
            name,
            type_,
            durable=bool(method.durable),
            auto_delete=bool(method.auto_delete),
            internal=bool(method.internal),
            passive=bool(method.passive),
            arguments=plain_arguments(method.arguments or {}) or None,
        )
        if not method.nowait:
            self.conn.send(M.exchange_declare_ok(self.number))

    def _on_exchange_delete(self, mid: int, method: C.Exchange.Delete) -> None:
        try:
            self.conn.core.delete_exchange(method.exchange or "", bool(method.if_unused))
        except NotFound:
            pass  # RabbitMQ: deleting an exchange that does not exist succeeds
        if not method.nowait:
            self.conn.send(M.exchange_delete_ok(self.number))

    def _on_exchange_bind(self, mid: int, method: C.Exchange.Bind) -> None:
        self.conn.core.bind_exchange(
            method.destination or "",
            method.source or "",
            method.routing_key or "",
            plain_arguments(method.arguments or {}) or None,
        )
        if not method.nowait:
            self.conn.send(M.exchange_bind_ok(self.number))

    def _on_exchange_unbind(self, mid: int, method: C.Exchange.Unbind) -> None:
        destination = method.destination or ""
        source = method.source or ""
        try:
            self.conn.core.unbind_exchange(
                destination,
                source,
                method.routing_key or "",
                plain_arguments(method.arguments or {}) or None,
            )
        except NotFound as exc:
            # RabbitMQ answers unbind-ok when either exchange does not exist (no binding
            # to remove; an auto-delete exchange may have gone with its last binding);
            # the permission check ran before.
            if exc.details.get("exchange") not in (destination, source):
                raise
        if not method.nowait:
            self.conn.send(M.exchange_unbind_ok(self.number))

    # -- queues ----------------------------------------------------------------------------

    def _on_queue_declare(self, mid: int, method: C.Queue.Declare) -> None:
        conn = self.conn
        name = method.queue or ""
        if method.passive and not name:
            name = self._queue_name(name)
        if name == REPLY_TO_QUEUE or name.startswith(REPLY_TO_PREFIX):
            # RabbitMQ: the pseudo-queue and a live reply name "exist" (declare-ok, with
            # no messages and one consumer); a reply name whose channel is gone does not.
            if name != REPLY_TO_QUEUE and self._replies.get(name) is None:
                raise AmqpError(NOT_FOUND, f"no queue '{name}' in vhost '{conn.vhost}'", mid)
            if not method.nowait:
                conn.send(M.queue_declare_ok(self.number, name, 0, 1))
            return
        arguments = plain_arguments(method.arguments or {})
        q = conn.core.declare_queue(
            name,
            owner=conn,
            durable=bool(method.durable),
            exclusive=bool(method.exclusive),
            auto_delete=bool(method.auto_delete),
            passive=bool(method.passive),
            arguments=arguments or None,
        )
        self.last_queue = q.name
        if not method.nowait:
            conn.send(M.queue_declare_ok(self.number, q.name, q.ready_count, q.consumer_count))

    def _on_queue_bind(self, mid: int, method: C.Queue.Bind) -> None:
        conn = self.conn
        conn.core.bind_queue(
            self._queue_name(method.queue),
            method.exchange or "",
            method.routing_key or "",
            plain_arguments(method.arguments or {}) or None,
            conn,
        )
        if not method.nowait:
            conn.send(M.queue_bind_ok(self.number))

    def _on_queue_unbind(self, mid: int, method: C.Queue.Unbind) -> None:
        conn = self.conn
        name = self._queue_name(method.queue)
        try:
            conn.core.unbind_queue(
                name,
                method.exchange or "",
                method.routing_key or "",
                plain_arguments(method.arguments or {}) or None,
                conn,
            )
        except NotFound as exc:
            # RabbitMQ answers unbind-ok for a queue or an exchange that does not exist
            # (no binding to remove); the permission check ran before.
            if exc.details.get("queue") != name and exc.details.get("exchange") != (
                method.exchange or ""
            ):
                raise
        conn.send(M.queue_unbind_ok(self.number))

    def _on_queue_purge(self, mid: int, method: C.Queue.Purge) -> None:
        conn = self.conn
        q = conn.core.queue_to_purge(self._queue_name(method.queue), conn)
        n = q.purge()
        if method.nowait:
            return
        answer = M.queue_purge_ok(self.number, n)
        store = conn.virtual_host.store
        if q.persist and store is not None and not store.idle:
            # Answer once the purge's ack records are on disk, as the native protocol.
            store.after_commit(lambda: conn.send(answer))
            return
        conn.send(answer)

    def _on_queue_delete(self, mid: int, method: C.Queue.Delete) -> None:
        conn = self.conn
        # As RabbitMQ: a channel that deletes a queue it consumes from gets delete-ok
        # first, then basic.cancel; py-amqp (kombu) raises ConsumerCancelled out of its
        # wait for delete-ok otherwise.
        held: list[bytes] = []
        self._held_cancels = held
        try:
            n = conn.core.delete_queue(
                self._queue_name(method.queue),
                conn,
                bool(method.if_unused),
                bool(method.if_empty),
            )
        except NotFound:
            n = 0  # RabbitMQ: deleting a queue that does not exist succeeds
        finally:
            self._held_cancels = None
        if not method.nowait:
            conn.send(M.queue_delete_ok(self.number, n))
        if held:
            conn.send_many(held)
