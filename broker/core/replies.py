"""Direct reply-to (RabbitMQ's ``amq.rabbitmq.reply-to``): RPC replies without a queue.

A client of a wire adapter that has reply consumers (today AMQP: a no-ack consume of the
pseudo-queue ``amq.rabbitmq.reply-to``) registers one here and gets a name
``amq.rabbitmq.reply-to.<token>``, which it sends as the ``reply_to`` of its requests.
A publish to the default exchange with such a name as routing key is delivered straight
to that reply consumer, whatever protocol the publisher speaks (``Publisher.publish``):
no queue, no store, no acknowledgement.  A reply whose consumer is gone is unroutable
(dropped, or returned when mandatory).

Each vhost's publisher has its own registry: a name reaches a consumer of the same vhost
only, and the names are per broker process (not valid across a restart).
"""

from __future__ import annotations

import secrets
from typing import Any, Final, Protocol

REPLY_TO_QUEUE: Final = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX: Final = REPLY_TO_QUEUE + "."
# 18 random bytes: 24 URL-safe characters, not guessable by another client.
TOKEN_BYTES: Final = 18


class ReplyConsumer(Protocol):
    """A session's reply consumer, as the wire adapter that owns it implements it."""

    @property
    def closing(self) -> bool:
        """The session is closing: replies no longer reach it."""
        ...

    def deliver_replies(
        self, name: str, props: dict[str, Any] | None, bodies: list[bytes] | tuple[bytes, ...]
    ) -> None:
        """Deliver ``bodies`` (published to ``name``) to the client at once."""
        ...


class ReplyRegistry:
    """The reply consumers of one vhost, by their reply name."""

    __slots__ = ("_consumers",)

    def __init__(self) -> None:
        self._consumers: dict[str, ReplyConsumer] = {}

    def __len__(self) -> int:
        return len(self._consumers)

    def register(self, consumer: ReplyConsumer) -> str:
        """A new reply name for ``consumer``."""
        while True:
            name = REPLY_TO_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
            if name not in self._consumers:
                self._consumers[name] = consumer
                return name

    def unregister(self, name: str) -> None:
        self._consumers.pop(name, None)

    def get(self, name: str) -> ReplyConsumer | None:
        """The live consumer of ``name``, or None."""
        consumer = self._consumers.get(name)
        if consumer is None or consumer.closing:
            return None
        return consumer
