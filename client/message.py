"""Received messages, queue info, and the message-properties map."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument

if TYPE_CHECKING:
    from .core import AckChannel
    from .transactions import TransactionalProducer


class QueueInfo(NamedTuple):
    """Result of ``declare_queue``: the (possibly server-named) queue and its counts."""

    name: str
    messages: int
    consumers: int


class MessageFields:
    """What a delivered message carries, and its properties by name: the part that
    ``Message`` and the blocking client's ``SyncMessage`` share."""

    __slots__ = (
        "delivery_tag",
        "redelivered",
        "delivery_count",
        "exchange",
        "routing_key",
        "properties",
        "body",
    )

    delivery_tag: int
    redelivered: bool
    delivery_count: int
    exchange: str
    routing_key: str
    properties: dict[str, Any] | None
    body: bytes

    def _copy_fields(self, other: MessageFields) -> None:
        for name in MessageFields.__slots__:
            setattr(self, name, getattr(other, name))

    # -- properties ----------------------------------------------------------------

    def _prop(self, key: str) -> Any:
        props = self.properties
        return None if props is None else props.get(key)

    @property
    def headers(self) -> dict[str, Any]:
        """The headers map (empty when the message has none)."""
        headers = self._prop("headers")
        return headers if isinstance(headers, dict) else {}

    @property
    def content_type(self) -> str | None:
        return self._prop("content_type")  # type: ignore[no-any-return]

    @property
    def content_encoding(self) -> str | None:
        return self._prop("content_encoding")  # type: ignore[no-any-return]

    @property
    def message_id(self) -> str | None:
        return self._prop("message_id")  # type: ignore[no-any-return]

    @property
    def correlation_id(self) -> str | None:
        return self._prop("correlation_id")  # type: ignore[no-any-return]

    @property
    def reply_to(self) -> str | None:
        return self._prop("reply_to")  # type: ignore[no-any-return]

    @property
    def timestamp(self) -> int | None:
        """Epoch milliseconds."""
        return self._prop("timestamp")  # type: ignore[no-any-return]

    @property
    def type(self) -> str | None:
        return self._prop("type")  # type: ignore[no-any-return]

    @property
    def app_id(self) -> str | None:
        return self._prop("app_id")  # type: ignore[no-any-return]

    @property
    def user_id(self) -> str | None:
        return self._prop("user_id")  # type: ignore[no-any-return]

    @property
    def persistent(self) -> bool:
        return bool(self._prop("persistent"))

    @property
    def priority(self) -> int | None:
        return self._prop("priority")  # type: ignore[no-any-return]

    @property
    def expiration(self) -> int | None:
        """Per-message TTL in milliseconds."""
        return self._prop("expiration")  # type: ignore[no-any-return]


class Message(MessageFields):
    """One delivered message.

    ``ack``/``nack``/``reject`` only queue a frame (no round trip); acks are coalesced
    into one ACK_MANY per event-loop iteration.  Messages from a ``no_ack`` consumer or
    ``get(no_ack=True)`` have nothing to settle: those methods then do nothing.
    """

    __slots__ = ("_channel",)

    _channel: AckChannel | None

    def __init__(
        self,
        delivery_tag: int,
        redelivered: bool,
        delivery_count: int,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        body: bytes,
        channel: AckChannel | None = None,
    ) -> None:
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.delivery_count = delivery_count
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body
        self._channel = channel

    def __repr__(self) -> str:
        return (
            f"<Message tag={self.delivery_tag} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} body={len(self.body)} bytes>"
        )

    # -- settling ------------------------------------------------------------------

    async def ack(
        self, multiple: bool = False, *, transaction: TransactionalProducer | None = None
    ) -> None:
        """Acknowledge (with ``multiple``: every unsettled delivery up to this one).

        ``transaction=p``: the ack is part of ``p``'s open transaction (same
        connection): applied if it commits, the message redelivered if it aborts
        (``p.ack_in_transaction(message)``)."""
        if transaction is not None:
            if multiple:
                raise InvalidArgument("an ack in a transaction names its messages (no multiple)")
            await transaction.ack_in_transaction(self)
            return
        channel = self._channel
        if channel is not None:
            if multiple:
                channel.settle(F.Ack(channel.ack_id, self.delivery_tag, multiple=True))
            else:
                channel.ack(self.delivery_tag)

    async def nack(self, requeue: bool = True, multiple: bool = False, delay_ms: int = 0) -> None:
        """Negatively acknowledge: requeue, or dead-letter/drop with ``requeue=False``.

        ``delay_ms`` (with ``requeue``): the broker keeps the message back that long before
        it is ready again at its original position (Wharf's delayed retry).
        """
        channel = self._channel
        if channel is not None:
            channel.settle(F.Nack(channel.ack_id, self.delivery_tag, multiple, requeue, delay_ms))

    async def reject(self, requeue: bool = True) -> None:
        """Reject this one message (``nack`` without ``multiple``)."""
        channel = self._channel
        if channel is not None:
            channel.settle(F.Reject(channel.ack_id, self.delivery_tag, requeue))


_new_message = Message.__new__


def ack_channel_of(message: Message) -> AckChannel | None:
    """Where ``message`` is settled (None: nothing to settle, a no_ack delivery)."""
    return message._channel


def messages_from_entries(entries: Iterable[Any], channel: AckChannel | None) -> list[Message]:
    """Build ``Message`` objects from raw DELIVER entries.

    Each entry is ``[delivery_tag, redelivered, delivery_count, exchange, routing_key,
    properties, body]``.  This is the consumer hot path: it skips ``__init__`` (about a
    third cheaper per message) and unpacks each entry in one step.
    """
    out: list[Message] = []
    append = out.append
    for entry in entries:
        m = _new_message(Message)
        try:
            (
                m.delivery_tag,
                m.redelivered,
                m.delivery_count,
                m.exchange,
                m.routing_key,
                m.properties,
                m.body,
            ) = entry
        except ValueError:  # a newer broker may append fields: ignore them
            (
                m.delivery_tag,
                m.redelivered,
                m.delivery_count,
                m.exchange,
                m.routing_key,
                m.properties,
                m.body,
            ) = entry[:7]
        m._channel = channel
        append(m)
    return out


def message_from_entry(entry: Any, channel: AckChannel | None) -> Message:
    tag, redelivered, count, exchange, routing_key, properties, body = entry[:7]
    return Message(tag, redelivered, count, exchange, routing_key, properties, body, channel)


def build_properties(
    headers: dict[str, Any] | None,
    content_type: str | None,
    content_encoding: str | None,
    message_id: str | None,
    correlation_id: str | None,
    reply_to: str | None,
    timestamp: int | datetime | None,
    type: str | None,
    app_id: str | None,
    user_id: str | None,
    persistent: bool,
    priority: int | None,
    expiration: int | None,
) -> dict[str, Any] | None:
    """The properties map for a publish: only the keys that are set (None when empty).

    ``persistent`` is included only when True; ``timestamp`` goes on the wire as int
    epoch milliseconds (a ``datetime`` is converted).
    """
    props: dict[str, Any] = {}
    if headers is not None:
        props["headers"] = headers
    if content_type is not None:
        props["content_type"] = content_type
    if content_encoding is not None:
        props["content_encoding"] = content_encoding
    if message_id is not None:
        props["message_id"] = message_id
    if correlation_id is not None:
        props["correlation_id"] = correlation_id
    if reply_to is not None:
        props["reply_to"] = reply_to
    if timestamp is not None:
        props["timestamp"] = (
            int(timestamp.timestamp() * 1000) if isinstance(timestamp, datetime) else timestamp
        )
    if type is not None:
        props["type"] = type
    if app_id is not None:
        props["app_id"] = app_id
    if user_id is not None:
        props["user_id"] = user_id
    if persistent:
        props["persistent"] = True
    if priority is not None:
        props["priority"] = priority
    if expiration is not None:
        props["expiration"] = expiration
    return props or None
